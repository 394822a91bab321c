"""Detectors that cannot start end `facescan scan` with exit 4 and the reason, instead of
a scan that spins starting detector after detector, or exits 0 with images pending."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.local.support import copy_samples, facescan, fetch

# Runs in every Python process of the scan: the detector subprocesses (and only they)
# note that they started and are SIGKILLed before they can start an image, as the kernel
# does to a process whose memory limit is too small to load its model.
KILL_DETECTORS_AT_START = """\
import os, signal, sys
if sys.argv and sys.argv[0].endswith("facescan-detector") and "run" in sys.argv:
    with open(os.environ["FACESCAN_TEST_STARTS"], "a") as starts:
        starts.write("started\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_detectors_that_die_before_any_image_end_the_scan(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_DETECTORS_AT_START)
    starts = tmp_path / "starts"

    result = facescan(
        "scan",
        library,
        "--workers",
        "2",
        "--batch-size",
        "1",
        dsn=dsn,
        timeout=120,
        env={"PYTHONPATH": str(site), "FACESCAN_TEST_STARTS": str(starts)},
    )

    assert result.returncode == 4, result.stderr
    assert "3 detectors in a row died before starting any image" in result.stderr
    assert "killed by signal 9" in result.stderr
    assert "Traceback" not in result.stderr
    # bounded: the start-up budget (3) plus what the other worker slot had in flight
    started = starts.read_text().count("started")
    assert 3 <= started <= 4
    # nothing charged, nothing lost: every image is back in the queue, runnable
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == 0
    states = fetch(dsn, "SELECT state, attempts, lease_owner FROM facescan.images")
    assert [(r["state"], r["attempts"], r["lease_owner"]) for r in states] == [
        ("pending", 0, None)
    ] * 6


@pytest.mark.slow
def test_a_model_that_cannot_start_exits_4_with_the_reason(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "biden.jpg"])
    missing = tmp_path / "no-models"

    result = facescan(
        "scan", library, "--model", "insightface", "--model-dir", missing, dsn=dsn, timeout=120
    )

    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("facescan: the detector cannot start:")
    assert f"InsightFace model directory {missing} does not exist" in last
    assert "Traceback" not in result.stderr
    images = fetch(dsn, "SELECT state, attempts FROM facescan.images ORDER BY path")
    assert [(r["state"], r["attempts"]) for r in images] == [("pending", 0)] * 2

    # nothing was tried (the model is loaded before any image starts), so the next scan
    # meets the same reason rather than images waiting for a retry
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == 0
    again = facescan(
        "scan", library, "--model", "insightface", "--model-dir", missing, dsn=dsn, timeout=120
    )
    assert again.returncode == 4, again.stderr
    assert f"InsightFace model directory {missing} does not exist" in again.stderr


@pytest.mark.slow
def test_a_scan_says_when_the_images_waiting_for_a_retry_are_due(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    (library / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    first = facescan("scan", library, "--model", "hog", dsn=dsn, timeout=120)
    assert first.returncode == 0, first.stderr
    # right after, nothing is runnable yet: the scan says when it will be, not just
    # "1 pending"
    again = facescan("scan", library, "--model", "hog", dsn=dsn, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "pending images wait for their retry back-off, the first until " in again.stdout
    assert "`facescan requeue` to retry them now" in again.stdout
