"""The database disappears in the middle of `facescan scan` and comes back: the scan
waits it out (saying so), resumes, finishes every image, and no image is charged for an
outage that was not its fault."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facescan_operator.embedded_db import EmbeddedDatabase
from tests.e2e.local.support import (
    RestartableServer,
    copy_samples,
    detector_of,
    duplicated_faces,
    fetch,
    last_json,
    mirrored_samples,
    start_facescan,
    wait_for_done,
)

OUTAGE_S = 5.0


@pytest.fixture
def own_server() -> Iterator[tuple[str, RestartableServer]]:
    """A PostgreSQL of this test alone (it will be stopped and started again).

    Not under tmp_path: a pytest session starting meanwhile makes /tmp/pytest-of-<user>
    private again (0700), and the server, run as its own system user when we are root,
    could then not be started again in there."""
    parent = Path(tempfile.mkdtemp(prefix="facescan-outage-"))
    database = EmbeddedDatabase(parent / "pg", database="outage")
    user = "embedded_postgres" if os.geteuid() == 0 else None
    server = RestartableServer(database.data_dir, user)
    try:
        yield database.dsn, server
    finally:
        database.stop()
        server.ensure_stopped()  # the library's handle knows only the first postmaster
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.slow
def test_scan_survives_a_database_outage_without_charging_images(
    own_server: tuple[str, RestartableServer], tmp_path: Path
) -> None:
    dsn, server = own_server
    library = tmp_path / "photos"
    names = copy_samples(library) + mirrored_samples(library)
    for name in copy_samples(library / "again"):
        names.append(f"again/{name}")

    scan = start_facescan(
        "scan",
        library,
        "--workers",
        "2",
        "--batch-size",
        "3",
        "--json",
        dsn=dsn,
        out=tmp_path / "scan",
    )
    try:
        wait_for_done(dsn, str(library), 2, timeout=120)
        port, socket_dir = server.stop()
        stopped_at = time.monotonic()
        time.sleep(OUTAGE_S)
        assert scan.poll() is None, "the scan gave up during the outage"
        server.start(port, socket_dir)
        outage = time.monotonic() - stopped_at
        returncode = scan.wait(timeout=300)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    stderr = (tmp_path / "scan.stderr").read_text()
    assert returncode == 0, stderr
    assert outage >= OUTAGE_S
    assert "database unavailable" in stderr

    summary = last_json((tmp_path / "scan.stdout").read_text())
    assert (summary["images"], summary["done"]) == (len(names), len(names))
    assert (summary["retrying"], summary["dead"], summary["by_error_type"]) == (0, 0, {})
    # nothing was charged for the outage
    assert fetch(dsn, "SELECT * FROM facescan.failures") == []
    failed = fetch(dsn, "SELECT error_type, error FROM facescan.attempts WHERE outcome = 'failed'")
    assert [tuple(r) for r in failed] == []
    assert fetch(dsn, "SELECT count(*) FROM facescan.images WHERE attempts > 0")[0][0] == 0
    assert fetch(dsn, "SELECT count(*) FROM facescan.leases")[0][0] == 0
    assert duplicated_faces(dsn) == []


@pytest.mark.slow
def test_a_worker_that_dies_during_the_outage_is_released_when_it_ends(
    own_server: tuple[str, RestartableServer], tmp_path: Path
) -> None:
    """The runner cannot hand the dead worker's lease back while the database is down; it
    must do so once it is back, not forget the worker (its images would stay leased)."""
    dsn, server = own_server
    library = tmp_path / "photos"
    names = copy_samples(library) + mirrored_samples(library)

    scan = start_facescan(
        "scan",
        library,
        "--workers",
        "1",
        "--batch-size",
        "12",
        "--json",
        dsn=dsn,
        out=tmp_path / "scan",
    )
    try:
        detector = detector_of(scan)
        owner = detector.cmdline()[detector.cmdline().index("--owner") + 1]
        wait_for_done(dsn, str(library), 1, timeout=120)
        port, socket_dir = server.stop()
        detector.send_signal(signal.SIGKILL)
        time.sleep(OUTAGE_S)
        server.start(port, socket_dir)
        returncode = scan.wait(timeout=300)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    stderr = (tmp_path / "scan.stderr").read_text()
    assert returncode == 0, stderr

    summary = last_json((tmp_path / "scan.stdout").read_text())
    assert (summary["images"], summary["leased"], summary["dead"]) == (len(names), 0, 0)
    # the image it had in progress is charged crash, the rest of its batch was done
    assert (summary["done"], summary["retrying"]) == (len(names) - 1, 1)
    assert summary["by_error_type"] == {"crash": 1}
    charged = fetch(
        dsn, "SELECT worker, error_type FROM facescan.attempts WHERE outcome = 'failed'"
    )
    assert [tuple(r) for r in charged] == [(owner, "crash")]
    assert fetch(dsn, "SELECT count(*) FROM facescan.leases")[0][0] == 0
    assert duplicated_faces(dsn) == []
    assert f"{owner}: detector ended (killed by signal 9" in stderr
