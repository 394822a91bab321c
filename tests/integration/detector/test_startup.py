"""A detector that cannot start: the database is down or has no facescan schema, or the
models of its cascade step are missing. It says what is wrong without a traceback and
charges no image for it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import asyncpg

from facescan_queue.models import LibraryPolicy
from facescan_queue.repository import Queue
from tests.integration.detector.support import (
    LIB,
    attempts_of,
    copy_samples,
    detector_env,
    images_by_path,
    register_and_claim,
    run_detector,
    untouched,
)

EXIT_STARTUP = 2
EXIT_UNAVAILABLE = 75


def closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_database_down_at_start_exits_75_naming_where_it_tried(tmp_path: Path) -> None:
    port = closed_port()
    dsn = f"postgresql://facescan@127.0.0.1:{port}/photos"
    env = detector_env(dsn, FACESCAN_DATABASE_RETRY_S="1")
    started = time.monotonic()

    run = await run_detector(dsn, "job-a", tmp_path, env=env, timeout=30)

    assert run.returncode == EXIT_UNAVAILABLE
    assert f"127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert time.monotonic() - started < 20


async def test_database_without_facescan_schema_exits_2_asking_to_migrate(
    empty_dsn: str, tmp_path: Path
) -> None:
    run = await run_detector(empty_dsn, "job-a", tmp_path)

    assert run.returncode == EXIT_STARTUP
    assert "facescan db migrate" in run.stderr
    assert "Traceback" not in run.stderr


async def test_missing_models_stop_the_detector_without_charging_the_image(
    queue: Queue, db: asyncpg.Connection, dsn: str, root: Path, tmp_path: Path
) -> None:
    await queue.ensure_library(
        LIB, LibraryPolicy(cascade_models=("insightface",), cascade_scales=(1.0,))
    )
    paths = copy_samples(root, ["obama.jpg", "cameraman.png"])
    await register_and_claim(queue, paths, "job-a")

    run = await run_detector(dsn, "job-a", root, "--model-dir", str(tmp_path / "no-models"))

    assert run.returncode == EXIT_STARTUP, run.stderr
    assert "no-models" in run.summary["reason"]
    images = await images_by_path(db)
    first = images["obama.jpg"]
    assert (first["state"], first["attempts"], first["error_type"]) == ("pending", 0, None)
    [attempt] = await attempts_of(db, "obama.jpg")
    assert (attempt["outcome"], attempt["error_type"]) == ("failed", "unavailable")
    assert untouched(images["cameraman.png"])
    assert await queue.failures(LIB) == []


async def test_insightface_model_dir_does_not_hide_the_dlib_models(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path, tmp_path: Path
) -> None:
    """--model-dir names the InsightFace models; a dlib step still finds its own."""
    buffalo = tmp_path / "buffalo_l"
    buffalo.mkdir()
    paths = copy_samples(root, ["obama.jpg"])
    await register_and_claim(hog_queue, paths, "job-a")

    run = await run_detector(dsn, "job-a", root, "--model-dir", str(buffalo))

    assert run.returncode == 0, run.stderr
    assert run.summary["faces"] == 1
    assert (await hog_queue.status(LIB)).done == 1
