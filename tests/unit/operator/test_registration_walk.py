"""registration: what a walk tells a registration (modification times, the directories it
could not read, which unseen paths are really gone) and how `register` words the result."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from facescan_operator import registration
from facescan_operator.commands import register_text, status_line
from facescan_operator.registration import gone, walk_directory
from facescan_queue.models import QueueStatus


def test_each_file_carries_its_modification_time_to_the_microsecond(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.utime(tmp_path / "a.jpg", ns=(0, 1_764_590_400_123_456_789))

    (image,) = walk_directory(tmp_path).images

    assert image.mtime == datetime(2025, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert image.file_bytes == 1


def test_a_directory_that_cannot_be_read_makes_the_walk_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for relative in ("a.jpg", "locked/b.jpg", "open/c.jpg"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    real = os.open

    def guarded(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(registration.os, "open", guarded)

    walk = walk_directory(tmp_path)

    assert [i.path for i in walk.images] == ["a.jpg", "open/c.jpg"]
    assert (walk.unreadable, walk.complete) == (["locked: Permission denied"], False)


def test_a_directory_gone_while_the_walk_runs_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    real = os.open

    def vanished(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "sub":
            raise FileNotFoundError(2, "No such file or directory")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(registration.os, "open", vanished)

    assert walk_directory(tmp_path).complete


def test_an_unreadable_root_is_reported_as_such(tmp_path: Path) -> None:
    walk = walk_directory(tmp_path / "nowhere")
    assert walk.images == []
    assert walk.unreadable == [".: No such file or directory"]


def test_only_paths_with_nothing_there_are_gone(tmp_path: Path) -> None:
    (tmp_path / "here.jpg").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "skipped.jpg").write_bytes(b"")

    paths = ["here.jpg", "gone.jpg", "file/under-a-file.jpg", ".hidden/skipped.jpg", "x/y.jpg"]

    assert gone(tmp_path, paths) == ["gone.jpg", "file/under-a-file.jpg", "x/y.jpg"]


def test_facescans_own_images_are_never_gone(tmp_path: Path) -> None:
    """The reference photos uploaded to POST /people have no file in the root."""
    assert gone(tmp_path, [".facescan/uploads/0a1b", "gone.jpg"]) == ["gone.jpg"]


def test_register_says_what_changed_went_missing_and_came_back() -> None:
    result = {
        "library": "photos/family",
        "root": "/mnt",
        "images": 1,
        "registered": 0,
        "changed": 2,
        "deferred": 1,
        "missing": 3,
        "returned": 1,
        "without_size": 0,
        "unreadable": ["2019: Permission denied"],
    }
    assert register_text(result).splitlines() == [
        "1 image under /mnt: 0 new in library photos/family",
        "2 changed files queued again from the first cascade step (old faces deleted)",
        "1 changed file being detected now: queued again by the next registration",
        "3 images marked missing (file gone; faces kept, not detected until it is back)",
        "1 missing image back",
        "could not read (2019: Permission denied): walk incomplete, nothing marked missing",
    ]


def test_the_status_line_counts_missing_images_only_when_there_are() -> None:
    counts = QueueStatus(images=3, done=1, pending=1, missing=1, faces=2)
    assert status_line(counts).endswith("1 pending (0 retrying), 0 dead, 1 missing")
    assert status_line(QueueStatus()).endswith("0 dead")
