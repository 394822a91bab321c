"""`facescan serve --data-dir`: the command starts its own embedded PostgreSQL (schema
brought up to date), serves /process over it, and on SIGTERM stops the server, then the
database, and exits 0. A real process on 127.0.0.1, a real photograph, real dlib."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.api.support import FACESCAN, SAMPLES, ApiServer, server_env
from tests.integration.detector.support import HOG_FACES

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


def postgres_of(data_dir: Path) -> list[int]:
    """The PostgreSQL servers running on ``data_dir`` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if args and args[0].endswith(b"/postgres") and str(data_dir).encode() in b" ".join(args):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_serve_with_a_data_dir_runs_process_jobs_and_stops_its_database(tmp_path: Path) -> None:
    data_dir, media = tmp_path / "pg", tmp_path / "media"
    server = ApiServer(
        [
            "--data-dir",
            str(data_dir),
            "--no-auth",
            "--media-dir",
            str(media),
            "--path-root",
            str(SAMPLES),
            "--threads",
            "1",
        ],
        server_env(),
        tmp_path / "server.log",
        program=FACESCAN,
    )
    try:
        ready = server.request("GET", "/health/ready", timeout=10).json()
        running = postgres_of(data_dir)
        job = {"job_id": "obama-1", "media_id": "m", "path": str(SAMPLES / "obama.jpg")}
        answer = server.request("POST", "/process", json.dumps(job).encode(), JSON, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = server.request("GET", "/process/obama-1", timeout=30).json()
            if body["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert ready["database"]["configured"] is True
    assert ready["database"]["reachable"] is True
    assert len(running) == 1, running
    assert answer.status == 202, answer.body
    assert body["state"] == "done", body
    assert len(body["faces"]) == HOG_FACES["obama.jpg"]
    assert body["faces"][0]["box"]["right"] > body["faces"][0]["box"]["left"]
    assert len(body["faces"][0]["embedding"]["vector"]) == 128
    assert postgres_of(data_dir) == []
    assert not any(data_dir.rglob("postmaster.pid"))
    assert not alive(running[0])
