"""Results of other settings, `facescan rescan`, and paths that are not registered images:
a change of model or max dimension is never a silent no-op, a rescan redoes what it
names, and `requeue`/`rescan` of an unknown path exit 2 as `faces` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.local.support import copy_samples, facescan, fetch, last_json


def _attempts(dsn: str) -> int:
    return int(fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0])


@pytest.mark.slow
def test_a_new_max_dimension_is_reported_and_redone_with_rescan(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "biden.jpg"])
    first = facescan("scan", library, "--json", dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert _attempts(dsn) == 2

    changed = facescan("scan", library, "--max-dimension", "640", dsn=dsn)
    assert changed.returncode == 0, changed.stderr
    assert (
        "2 images done with other settings kept (2 with hog@1 at max dimension 1280), "
        "not hog at max dimension 640: `facescan scan --rescan` with these options redoes them"
    ) in changed.stdout
    assert _attempts(dsn) == 2  # kept, as it says

    redone = facescan("scan", library, "--max-dimension", "640", "--rescan", "--json", dsn=dsn)
    assert redone.returncode == 0, redone.stderr
    summary = last_json(redone.stdout)
    assert (summary["rescanned"], summary["done"], summary["done_with_other_settings"]) == (2, 2, 0)
    assert _attempts(dsn) == 4
    dimensions = fetch(dsn, "SELECT DISTINCT max_dimension FROM facescan.detections")
    assert [r["max_dimension"] for r in dimensions] == [640]

    again = facescan("scan", library, "--max-dimension", "640", dsn=dsn)
    assert "other settings" not in again.stdout
    assert _attempts(dsn) == 4


@pytest.mark.slow
def test_rescan_command_queues_done_images_for_the_next_scan(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "biden.jpg"])
    assert facescan("scan", library, dsn=dsn).returncode == 0

    only_degraded = facescan("rescan", library, "--json", dsn=dsn)
    assert only_degraded.returncode == 0, only_degraded.stderr
    assert last_json(only_degraded.stdout) == {"rescanned": 0}

    one = facescan("rescan", "--all", library / "obama.jpg", dsn=dsn)
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("queued 1 image again")
    states = fetch(dsn, "SELECT path, state FROM facescan.images ORDER BY path")
    assert [(r["path"], r["state"]) for r in states] == [
        ("biden.jpg", "done"),
        ("obama.jpg", "pending"),
    ]
    assert facescan("scan", library, dsn=dsn).returncode == 0
    assert _attempts(dsn) == 3


def test_requeue_and_rescan_of_a_path_that_is_no_image_exit_2_like_faces(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    assert facescan("register", library, dsn=dsn).returncode == 0
    nonexistent = library / "nonexistent.jpg"
    for command in (["faces"], ["requeue"], ["rescan", "--all"]):
        result = facescan(*command, nonexistent, dsn=dsn)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "'nonexistent.jpg' is not a registered image" in result.stderr
    requeued = facescan("requeue", library / "obama.jpg", dsn=dsn)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith("requeued 0 images")
