"""The `facescan` command line as people expect it from tools like uv, ruff or kubectl:
--version, -h, usage lines naming their arguments, flags without a type, option ranges
refused up front with the limit in the message (exit 2, before any database)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.local.support import FACESCAN, copy_samples, facescan, fetch


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACESCAN), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version_and_short_help() -> None:
    version = _run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("facescan ")
    assert version.stdout.split()[1][0].isdigit()

    short, long = _run("scan", "-h"), _run("scan", "--help")
    assert short.returncode == long.returncode == 0
    assert short.stdout == long.stdout


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("scan", "Usage: facescan scan [OPTIONS] PATH..."),
        ("requeue", "Usage: facescan requeue [OPTIONS] [PATH]..."),
        ("rescan", "Usage: facescan rescan [OPTIONS] [PATH]..."),
        ("faces", "Usage: facescan faces [OPTIONS] PATH"),
        ("register", "Usage: facescan register [OPTIONS] ROOT"),
    ],
)
def test_usage_lines_name_the_arguments_and_flags_show_no_type(command: str, usage: str) -> None:
    help_text = _run(command, "-h").stdout
    assert help_text.splitlines()[0] == usage
    assert "<bool>" not in help_text
    assert "{" not in help_text.splitlines()[0]


def test_scan_help_says_what_is_skipped_and_the_exit_codes() -> None:
    help_text = " ".join(_run("scan", "-h").stdout.split())
    assert "hidden directories (names starting with a dot) and other files are skipped" in (
        help_text
    )
    assert "for 30 images or fewer" in help_text
    assert "4 the detectors cannot run" in help_text


@pytest.mark.parametrize(
    ("option", "value", "limit"),
    [
        ("--memory-limit", "10M", "at least 160M"),
        ("--memory-limit", "0", "at least 160M"),
        ("--memory-limit", "30M", "at least 160M"),
        ("--max-dimension", "5", "at least 160"),
        ("--max-dimension", "159", "at least 160"),
        ("--workers", "0", "greater than or equal to 1"),
        ("--batch-size", "0", "greater than or equal to 1"),
    ],
)
def test_values_no_detector_can_use_are_refused_before_anything_runs(
    dsn: str, tmp_path: Path, option: str, value: str, limit: str
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    result = facescan("scan", library, option, value, dsn=dsn)
    assert result.returncode == 2, result.stderr
    assert limit in result.stderr
    assert "Traceback" not in result.stderr
    # refused up front: nothing registered, no detector started
    assert fetch(dsn, "SELECT count(*) FROM facescan.images")[0][0] == 0
