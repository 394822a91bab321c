"""`facescan register` run again over a scanned library (what the operator's register Job
does every rescan interval): changed files are detected again, vanished ones marked
missing and found again, and a root that looks unmounted is refused; with the real CLI,
real photographs and a real database."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageOps

from .support import HOG_FACES, copy_samples, facescan, fetch, last_json


def _faces(dsn: str, path: str) -> int:
    rows = fetch(
        dsn,
        "SELECT count(f.id) FROM facescan.images i"
        " LEFT JOIN facescan.faces f ON f.image_id = i.id WHERE i.path = $1",
        path,
    )
    return int(rows[0][0])


def test_a_rescan_redoes_changed_files_and_marks_vanished_ones_missing(
    dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    copy_samples(root, ["obama.jpg", "biden.jpg", "astronaut.png"])
    first = facescan("scan", root, "--json", "--workers", "1", dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert (last_json(first.stdout)["done"], last_json(first.stdout)["faces"]) == (3, 4)
    attempts = fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0]

    away = tmp_path / "away"
    away.mkdir()
    shutil.move(root / "biden.jpg", away / "biden.jpg")  # deleted (or moved away)
    with Image.open(root / "astronaut.png") as img:  # edited and saved again
        ImageOps.mirror(img).save(root / "astronaut.png")

    rescan = facescan("register", root, "--json", dsn=dsn)

    assert rescan.returncode == 0, rescan.stderr
    assert last_json(rescan.stdout) == {
        "library": str(root.resolve()),
        "root": str(root.resolve()),
        "images": 2,
        "registered": 0,
        "changed": 1,
        "deferred": 0,
        "missing": 1,
        "returned": 0,
        "without_size": 0,
        "unreadable": [],
    }
    status = last_json(facescan("status", "--json", dsn=dsn).stdout)
    counts = ("images", "done", "pending", "missing", "faces")
    # biden keeps its face while missing; astronaut's old faces are gone
    assert {k: status[k] for k in counts} == {
        "images": 3,
        "done": 1,
        "pending": 1,
        "missing": 1,
        "faces": 2,
    }
    assert _faces(dsn, "astronaut.png") == 0
    text = facescan("status", dsn=dsn).stdout
    assert "1 pending (0 retrying), 0 dead, 1 missing" in text

    again = facescan("scan", root, "--json", "--workers", "1", dsn=dsn)

    assert again.returncode == 0, again.stderr
    summary = last_json(again.stdout)
    assert (summary["done"], summary["missing"], summary["pending"]) == (2, 1, 0)
    assert _faces(dsn, "astronaut.png") == HOG_FACES["astronaut.png"]  # the mirrored one's
    # only the changed file was detected again: the missing one was never claimed
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == attempts + 1

    shutil.move(away / "biden.jpg", root / "biden.jpg")  # back, as it was
    back = facescan("register", root, dsn=dsn)

    assert back.returncode == 0, back.stderr
    assert "1 missing image back" in back.stdout
    status = last_json(facescan("status", "--json", dsn=dsn).stdout)
    assert (status["done"], status["faces"], status.get("missing", 0)) == (3, 4, 0)
    assert _faces(dsn, "biden.jpg") == 1  # kept, not detected again


def test_an_empty_library_root_is_refused_until_told_the_files_are_gone(
    dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "mnt"
    copy_samples(root, ["obama.jpg", "biden.jpg"])
    assert facescan("register", root, "--library", "photos/family", dsn=dsn).returncode == 0
    for photo in root.iterdir():
        photo.unlink()  # an unmounted volume looks the same

    refused = facescan("register", root, "--library", "photos/family", "--json", dsn=dsn)

    assert refused.returncode == 5
    assert "library photos/family has 2 registered images: is the volume mounted?" in (
        refused.stderr
    )
    assert refused.stdout == ""
    marked = fetch(dsn, "SELECT count(*) FROM facescan.images WHERE missing_since IS NOT NULL")
    assert marked[0][0] == 0

    allowed = facescan(
        "register", root, "--library", "photos/family", "--allow-empty", "--json", dsn=dsn
    )

    assert allowed.returncode == 0, allowed.stderr
    assert last_json(allowed.stdout)["missing"] == 2
    status = last_json(facescan("status", "--json", dsn=dsn).stdout)
    assert (status["images"], status["missing"], status["pending"]) == (2, 2, 0)
