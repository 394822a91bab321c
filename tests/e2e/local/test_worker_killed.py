"""A detector subprocess SIGKILLed in the middle of its batch: the scan goes on with a new
worker, only the image in progress is charged `crash`, and once it is retried the faces
are exactly those of a clean run, without duplicates."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.local.support import (
    HOG_FACES,
    boxes_by_path,
    copy_samples,
    detector_of,
    duplicated_faces,
    facescan,
    fetch,
    last_json,
    mirrored_samples,
    start_facescan,
    wait_for_done,
)


def _library(root: Path) -> list[str]:
    """Twelve photographs: the six samples and their mirror images."""
    return sorted(copy_samples(root) + mirrored_samples(root))


@pytest.mark.slow
def test_killed_worker_charges_only_its_image_and_loses_no_face(dsn: str, tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    paths = _library(clean)
    assert _library(killed) == paths
    assert len(paths) == 12

    reference = facescan("scan", clean, "--workers", "1", "--batch-size", "12", "--json", dsn=dsn)
    assert reference.returncode == 0, reference.stderr
    assert last_json(reference.stdout)["done"] == 12

    scan = start_facescan(
        "scan",
        killed,
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
        wait_for_done(dsn, str(killed), 1)
        # freeze it, let a commit already sent land, then read what it has in progress
        detector.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        in_progress = fetch(
            dsn,
            "SELECT i.id, i.path FROM facescan.attempts a "
            "JOIN facescan.images i ON i.id = a.image_id "
            "WHERE a.worker = $1 AND a.finished_at IS NULL",
            owner,
        )
        done_before = fetch(
            dsn,
            "SELECT count(*) FROM facescan.images WHERE library = $1 AND state = 'done'",
            str(killed),
        )[0][0]
        os.kill(detector.pid, signal.SIGKILL)
        assert scan.wait(timeout=120) == 0
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    stdout = (tmp_path / "scan.stdout").read_text()
    stderr = (tmp_path / "scan.stderr").read_text()
    assert len(in_progress) == 1, "the killed worker had an image in progress"
    victim_id, victim = in_progress[0]["id"], in_progress[0]["path"]
    assert 1 <= done_before < 12

    # the scan went on with a new worker; only the image in progress was charged
    summary = last_json(stdout)
    assert (summary["done"], summary["retrying"], summary["dead"]) == (11, 1, 0)
    assert summary["by_error_type"] == {"crash": 1}
    assert f"{owner}: detector ended (killed by signal 9" in stderr
    assert "charged crash" in stderr
    charged = fetch(
        dsn,
        "SELECT image_id, worker, error_type FROM facescan.attempts WHERE outcome = 'failed'",
    )
    assert [tuple(r) for r in charged] == [(victim_id, owner, "crash")]
    done_by = fetch(
        dsn,
        "SELECT worker = $2 AS killed, count(*) FROM facescan.attempts "
        "WHERE library = $1 AND outcome = 'done' GROUP BY 1 ORDER BY 1",
        str(killed),
        owner,
    )
    # the killed worker's done images stay done; new workers did the rest but its victim
    assert [tuple(r) for r in done_by] == [(False, 12 - done_before - 1), (True, done_before)]
    failure = fetch(dsn, "SELECT error_type, attempts, dead FROM facescan.failures")
    assert [tuple(r) for r in failure] == [("crash", 1, False)]
    assert fetch(dsn, "SELECT count(*) FROM facescan.leases")[0][0] == 0

    # retried (crash backs off 60 s: requeue makes it runnable now), it is done
    requeued = facescan("requeue", killed / victim, "--json", dsn=dsn)
    assert requeued.returncode == 0, requeued.stderr
    assert last_json(requeued.stdout) == {"requeued": 1}
    final = facescan("scan", killed, "--workers", "1", "--json", dsn=dsn)
    assert final.returncode == 0, final.stderr
    assert last_json(final.stdout)["libraries"][str(killed)]["done"] == 12
    assert fetch(dsn, "SELECT * FROM facescan.failures") == []

    expected = boxes_by_path(dsn, str(clean))
    assert boxes_by_path(dsn, str(killed)) == expected
    assert {p: len(expected[p]) for p in HOG_FACES} == HOG_FACES
    assert duplicated_faces(dsn) == []


@pytest.mark.slow
def test_a_terminated_scan_stops_its_workers_and_hands_every_image_back(
    dsn: str, tmp_path: Path
) -> None:
    """`kill` (SIGTERM: systemd, a container stop) ends a scan as Ctrl-C does: exit 143,
    no detector left running, no image left leased and none charged."""
    library = tmp_path / "photos"
    _library(library)
    scan = start_facescan(
        "scan", library, "--workers", "1", "--batch-size", "12", dsn=dsn, out=tmp_path / "scan"
    )
    try:
        detector = detector_of(scan)
        wait_for_done(dsn, str(library), 1)
        scan.send_signal(signal.SIGTERM)
        assert scan.wait(timeout=60) == 143
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    assert (
        "interrupted; unfinished images were handed back" in (tmp_path / "scan.stderr").read_text()
    )
    assert not detector.is_running()
    assert fetch(dsn, "SELECT count(*) FROM facescan.leases")[0][0] == 0
    states = fetch(dsn, "SELECT state, count(*) FROM facescan.images GROUP BY state ORDER BY state")
    assert {r["state"] for r in states} <= {"pending", "done"}
    assert fetch(dsn, "SELECT count(*) FROM facescan.failures")[0][0] == 0
    unfinished = fetch(
        dsn,
        "SELECT count(*) FROM facescan.attempts WHERE finished_at IS NULL OR outcome = 'failed'",
    )
    assert unfinished[0][0] == 0
