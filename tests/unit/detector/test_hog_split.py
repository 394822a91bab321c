"""dlib's HOG detector on two threads gives exactly dlib's one-thread result."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from facescan_detector.backends import create_detector
from facescan_detector.backends.base import Pixels
from facescan_detector.backends.hardware import usable_cpus
from facescan_detector.backends.hog_split import (
    SplitHog,
    SplitUnavailable,
    _layout,
    cache_dir,
    load_frontal,
)

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
PHOTOS = ("astronaut.png", "biden.jpg", "cameraman.png", "group_t1.jpg", "obama.jpg")

Found = list[tuple[tuple[int, int, int, int], float]]


def photo(name: str, long_side: int, *, mirrored: bool = False) -> Pixels:
    with Image.open(SAMPLES / name) as image:
        rgb = image.convert("RGB")
    factor = long_side / max(rgb.size)
    rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))))
    if mirrored:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(rgb)


def boxes(found: list[tuple[dlib.rectangle, float]]) -> Found:
    return [((r.left(), r.top(), r.right(), r.bottom()), round(s, 9)) for r, s in found]


@pytest.fixture(scope="module")
def split() -> Iterator[SplitHog]:
    detector = SplitHog.load()
    yield detector
    detector.close()


CASES = [
    (name, side, upsample, mirrored)
    for name in PHOTOS
    for side in (1280, 517, 130, 64)
    for upsample in (0, 1, 2)
    for mirrored in ((False, True) if side in (517, 130) else (False,))
    if not (side == 1280 and upsample == 2)
]


@pytest.mark.parametrize(("name", "side", "upsample", "mirrored"), CASES)
def test_same_boxes_scores_and_order_as_dlib(
    split: SplitHog, name: str, side: int, upsample: int, mirrored: bool
) -> None:
    pixels = photo(name, side, mirrored=mirrored)
    rects, scores, _ = dlib.get_frontal_face_detector().run(pixels, upsample, 0.0)
    expected = boxes(list(zip(rects, scores, strict=True)))
    assert boxes(split.run(pixels, upsample)) == expected
    assert split.fallbacks == 0  # every box of the small half mapped exactly


def test_large_faces_come_from_the_small_levels_and_small_ones_from_the_large(
    split: SplitHog,
) -> None:
    """Both halves really detect: obama's face (270 px) is found only at a small pyramid
    level, not at level 0; the group photo's faces (40-60 px, upsampled once) at the
    two largest."""
    big = photo("obama.jpg", 1280)
    assert len(split.run(big, 0)) == 1
    rects, _, _ = split._one.run(big, 0, 0.0)  # level 0 alone
    assert len(rects) == 0
    group = photo("group_t1.jpg", 1280)
    assert len(split.run(group, 1)) == 6


def test_the_detector_with_two_threads_finds_the_same_faces_as_with_one() -> None:
    pixels = photo("group_t1.jpg", 1280)
    one, two = create_detector("hog", threads=1), create_detector("hog", threads=2)
    try:
        faces_one, faces_two = one.detect(pixels), two.detect(pixels)
    finally:
        one.close()
        two.close()
    assert len(faces_one) == 6
    assert [(f.top, f.right, f.bottom, f.left, f.score) for f in faces_two] == [
        (f.top, f.right, f.bottom, f.left, f.score) for f in faces_one
    ]
    for a, b in zip(faces_one, faces_two, strict=True):
        assert np.array_equal(a.embedding, b.embedding)


@pytest.mark.parametrize("threads", [1, 2])
def test_room_for_the_next_image_is_made_once_per_detection(
    threads: int,
) -> None:
    """The detector loop starts decoding the next image on this signal: once per image,
    while the detection is still running (two-thread HOG: after level 0)."""
    detector = create_detector("hog", threads=threads)
    calls: list[str] = []
    try:
        faces = detector.detect(
            photo("group_t1.jpg", 1280), lambda: calls.append(threading.current_thread().name)
        )
    finally:
        detector.close()
    assert len(faces) == 6
    assert len(calls) == 1
    assert calls[0].startswith("hog") if threads == 2 else calls[0] == "MainThread"


def test_a_detector_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "frontal.svm"
    dlib.get_frontal_face_detector().save(str(path))
    data = path.read_bytes()
    assert _layout(data).window == (80, 80)
    with pytest.raises(SplitUnavailable, match="not an object_detector v2"):
        _layout(bytes([1, 3]) + data[2:])


def test_the_frontal_detector_is_cached_per_dlib_version_and_rebuilt_when_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = cache_dir() / f"dlib-{dlib.__version__}-frontal_face_detector.svm"
    pixels = photo("group_t1.jpg", 640)
    rects, scores, _ = dlib.get_frontal_face_detector().run(pixels, 1, 0.0)
    expected = boxes(list(zip(rects, scores, strict=True)))
    assert len(expected) == 6

    built, data = load_frontal(dlib)  # nothing cached yet: dlib's own, then written
    assert cached.read_bytes() == data
    loaded, again = load_frontal(dlib)  # from the cache
    assert again == data
    for detector in (built, loaded):
        rects, scores, _ = detector.run(pixels, 1, 0.0)
        assert boxes(list(zip(rects, scores, strict=True))) == expected

    for damage in (data[: len(data) // 2], b"\x05not a detector", b""):
        cached.write_bytes(damage)
        detector, rebuilt = load_frontal(dlib)
        assert rebuilt == data
        assert cached.read_bytes() == data
        rects, scores, _ = detector.run(pixels, 1, 0.0)
        assert boxes(list(zip(rects, scores, strict=True))) == expected


def test_an_unwritable_cache_costs_only_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    detector, data = load_frontal(dlib)
    assert _layout(data).window == (80, 80)
    assert len(detector.run(photo("obama.jpg", 640), 1, 0.0)[0]) == 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({}, None),
    ],
)
def test_usable_cpus_is_the_affinity_capped_by_a_container_cpu_limit(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))
