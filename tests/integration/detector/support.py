"""Helpers of the detector's integration tests: a library root made of real photographs,
images registered and claimed as the control plane would, the detector run as the runner
runs it (a subprocess with FACESCAN_DSN in its environment), and reads of the truth."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from facescan_detector.settings import DetectorSettings
from facescan_queue.models import ClaimedImage, LibraryPolicy, NewImage
from facescan_queue.repository import Queue

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples"
DETECTOR = Path(sys.executable).parent / "facescan-detector"
LIB = "photos"
UNKNOWN_SIZE = 5
"""Size class of images registered without width and height."""

HOG = LibraryPolicy(cascade_models=("hog",), cascade_scales=(1.0,))
HOG_THEN_HALF = LibraryPolicy(cascade_models=("hog", "hog"), cascade_scales=(1.0, 0.5))

OBAMA_BOX = (142, 617, 409, 349)
"""obama.jpg's HOG face (upsample 1) as top, right, bottom, left: face_recognition's own."""

HOG_FACES = {
    "obama.jpg": 1,
    "obama2.jpg": 1,
    "biden.jpg": 1,
    "group_t1.jpg": 6,
    "astronaut.png": 2,
    "cameraman.png": 0,
}
"""Faces HOG (upsample 1, long side capped at 1280) finds in each sample photograph."""


def copy_samples(root: Path, names: Iterable[str], *, prefix: str = "") -> list[str]:
    """Copies sample photographs into the library root; returns their relative paths."""
    paths = []
    for name in names:
        relative = f"{prefix}{name}"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / name, target)
        paths.append(relative)
    return paths


def copy_rolls(root: Path, name: str, count: int) -> list[str]:
    """``count`` copies of one sample photograph, roll00/NAME, roll01/NAME, ...: a batch
    long enough to stop a detector in the middle of."""
    paths = []
    for i in range(count):
        paths += copy_samples(root, [name], prefix=f"roll{i:02d}/")
    return paths


async def register_and_claim(
    queue: Queue,
    paths: Sequence[str],
    owner: str,
    *,
    lease_seconds: int = 120,
) -> list[ClaimedImage]:
    """Registers the paths (no header facts: size class 5) and leases them all to owner,
    in registration order, as the planner would for the one runnable group."""
    assert await queue.register(LIB, [NewImage(p) for p in paths]) == len(set(paths))
    groups = await queue.runnable_groups(LIB, cap=10_000)
    assert [(g.step, g.size_class) for g in groups] == [(0, UNKNOWN_SIZE)]
    claimed = await queue.claim(
        LIB,
        owner,
        step=groups[0].step,
        size_class=groups[0].size_class,
        limit=len(paths),
        lease_seconds=lease_seconds,
    )
    assert len(claimed) == len(set(paths))
    return claimed


@dataclass(frozen=True)
class DetectorRun:
    """What one ``facescan-detector run`` process did, as its runner sees it."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary line (the last line of stdout)."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no summary on stdout; stderr:\n{self.stderr}"
        summary: dict[str, Any] = json.loads(lines[-1])
        return summary


def detector_env(dsn: str, **extra: str) -> dict[str, str]:
    """The detector's environment: ours without FACESCAN_*, plus the DSN and extras.

    A database outage is waited out for 10 s, not 10 minutes, so a broken test fails
    instead of hanging."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESCAN_")}
    env["FACESCAN_DSN"] = dsn
    env["FACESCAN_DATABASE_RETRY_S"] = "10"
    env.update(extra)
    return env


async def start_detector(
    dsn: str,
    owner: str,
    root: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Starts ``facescan-detector run --owner OWNER --root ROOT ARGS`` as the runner does."""
    return await asyncio.create_subprocess_exec(
        str(DETECTOR),
        "run",
        "--owner",
        owner,
        "--root",
        str(root),
        *args,
        env=dict(env) if env is not None else detector_env(dsn),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )


async def finish(process: asyncio.subprocess.Process, *, timeout: float = 60) -> DetectorRun:
    """Waits for a detector process (killing it past ``timeout``) and collects its output."""
    assert process.stdout is not None
    assert process.stderr is not None
    reads = asyncio.gather(process.stdout.read(), process.stderr.read())
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        _, err = await reads
        raise AssertionError(
            f"detector still running after {timeout} s; stderr:\n{err.decode()}"
        ) from None
    out, err = await reads
    assert process.returncode is not None
    return DetectorRun(process.returncode, out.decode(), err.decode())


async def run_detector(
    dsn: str,
    owner: str,
    root: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 60,
) -> DetectorRun:
    """Runs the detector to its end."""
    process = await start_detector(dsn, owner, root, *args, env=env, preexec_fn=preexec_fn)
    return await finish(process, timeout=timeout)


async def wait_for_detections(db: asyncpg.Connection, count: int, *, timeout: float = 30) -> None:
    """Returns once ``count`` images have a committed detection."""
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM facescan.detections") < count:
        assert time.monotonic() < deadline, f"fewer than {count} images done in {timeout} s"
        await asyncio.sleep(0.02)


async def images_by_path(db: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    """Every image row, by path."""
    rows = await db.fetch("SELECT * FROM facescan.images ORDER BY id")
    return {r["path"]: r for r in rows}


async def face_counts(db: asyncpg.Connection) -> dict[str, int]:
    """Committed face rows per image path (0 for images without any)."""
    rows = await db.fetch(
        "SELECT i.path, count(f.id)::integer AS n FROM facescan.images i"
        " LEFT JOIN facescan.faces f ON f.image_id = i.id GROUP BY i.path"
    )
    return {r["path"]: r["n"] for r in rows}


async def boxes(queue: Queue, path: str) -> list[tuple[int, int, int, int]]:
    """Committed boxes of one image as (top, right, bottom, left), left to right."""
    image = await queue.image(LIB, path)
    return [
        (f["box_top"], f["box_right"], f["box_bottom"], f["box_left"])
        for f in await queue.faces(image["id"])
    ]


async def attempts_of(db: asyncpg.Connection, path: str) -> list[asyncpg.Record]:
    """The attempt history of one image, oldest first."""
    return await db.fetch(
        "SELECT a.* FROM facescan.attempts a JOIN facescan.images i ON i.id = a.image_id"
        " WHERE i.path = $1 ORDER BY a.id",
        path,
    )


def untouched(row: asyncpg.Record) -> bool:
    """An image handed back unpenalised: pending, never charged, no failure type."""
    return bool(
        row["state"] == "pending"
        and row["attempts"] == 0
        and row["step"] == 0
        and row["error_type"] is None
        and row["lease_owner"] is None
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) over one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def detector_settings(owner: str, root: Path, **overrides: Any) -> DetectorSettings:
    """Settings for running the detector in-process (``facescan_detector.run.run``)."""
    return DetectorSettings(lease_owner=owner, library_root=root, database_retry_s=10, **overrides)
