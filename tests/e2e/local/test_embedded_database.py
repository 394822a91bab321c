"""`facescan` on its embedded PostgreSQL (--data-dir): an unusable directory is a usage
error, a scan killed with SIGKILL leaves no server running without an owner, two scans
on one directory share it without a raw database error, and a scan leaves no temporary
directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.local.support import (
    FACESCAN,
    copy_samples,
    detector_of,
    facescan_embedded,
    last_json,
    postmaster_of,
)


def test_a_data_dir_that_is_a_file_or_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    for data_dir, why in (
        (a_file, "is not a directory"),
        (a_file / "postgres", "cannot be created"),
        (Path("/proc/facescan/postgres"), "cannot be created"),
    ):
        result = facescan_embedded("scan", library, data_dir=data_dir, timeout=60)
        assert result.returncode == 2, (data_dir, result.stderr)
        assert result.stderr.startswith(f"facescan: --data-dir {data_dir} {why}")
        assert "Traceback" not in result.stderr
    status = facescan_embedded("status", data_dir=a_file, timeout=60)
    assert status.returncode == 2


@pytest.mark.slow
def test_a_killed_scan_leaves_no_server_without_an_owner(tmp_path: Path) -> None:
    """Nor, once another scan ran, its workers' log folder."""
    library, data_dir, tmp = tmp_path / "photos", tmp_path / "db", tmp_path / "tmp"
    copy_samples(library)
    tmp.mkdir()
    log = tmp_path / "scan.stderr"
    with log.open("wb") as stderr:
        scan = subprocess.Popen(
            [str(FACESCAN), "scan", str(library), "--data-dir", str(data_dir), "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_env({"TMPDIR": str(tmp)}),
        )
    try:
        detector = detector_of(scan, timeout=240)
    except AssertionError as exc:
        raise AssertionError(f"exit {scan.poll()}: {log.read_text()}") from exc
    finally:
        scan.send_signal(signal.SIGKILL)
        scan.wait()
    # its detector is told (SIGTERM) and exits, not working on for nobody (its lease is
    # handed back, or expires and is reclaimed by the next scan)
    detector.wait(timeout=60)
    assert postmaster_of(data_dir) is not None  # nobody stopped the server

    status = facescan_embedded(
        "status", "--json", data_dir=data_dir, timeout=120, env={"TMPDIR": str(tmp)}
    )
    assert status.returncode == 0, status.stderr
    assert last_json(status.stdout)["images"] == 6
    # the last living user of the server left: it is stopped
    deadline = time.monotonic() + 30
    while postmaster_of(data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert postmaster_of(data_dir) is None

    assert list(tmp.glob("facescan-workers-*"))  # the killed scan could not remove it
    again = facescan_embedded("scan", library, data_dir=data_dir, env={"TMPDIR": str(tmp)})
    assert again.returncode == 0, again.stderr
    assert not list(tmp.glob("facescan-workers-*"))


@pytest.mark.slow
def test_two_scans_on_one_data_dir_share_it_and_leave_nothing_behind(tmp_path: Path) -> None:
    library, data_dir, tmp = tmp_path / "photos", tmp_path / "db", tmp_path / "tmp"
    copy_samples(library)
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    command = [str(FACESCAN), "scan", str(library), "--data-dir", str(data_dir), "--json"]
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env)
    )
    second = facescan_embedded("scan", library, "--json", data_dir=data_dir, env=env)
    out, err = first.communicate(timeout=300)

    for code, stdout, stderr in ((first.returncode, out, err), (second.returncode, *_io(second))):
        assert code == 0, stderr
        assert "ERROR" not in stderr
        assert "duplicate key" not in stderr
        summary = last_json(stdout)
        # what the other scan holds is counted, as in progress
        assert summary["done"] + summary["leased"] + summary["pending"] == 6
    assert last_json(second.stdout)["done"] + last_json(out)["done"] >= 6
    assert not list(tmp.glob("facescan-workers-*"))
    assert postmaster_of(data_dir) is None


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def _io(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    return done.stdout, done.stderr
