"""Video sampling: real videos made here with PyAV from the sample photographs (several
containers and codecs, a rotated one, a 4K one) and broken ones, each failure typed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facescan_detector.backends import FaceDetector, create_detector
from facescan_detector.errors import (
    DetectionTimeout,
    ImageDecodeError,
    ImageMissing,
    ImagePermissionError,
)
from facescan_detector.video import load_video_frames, probe, sample_frames, sample_times
from tests.videos import (
    BLACK_OBAMA_BIDEN,
    FORMATS,
    MP4_H264,
    Format,
    Scene,
    make_audio_only,
    make_empty,
    make_truncated,
    make_video,
)

FACES_AT = {1000: 0, 2000: 1, 3000: 1, 4000: 1, 5000: 1}
"""BLACK_OBAMA_BIDEN sampled 5 times: timestamp (ms) -> faces HOG finds."""


@pytest.fixture(scope="module")
def hog() -> Iterator[FaceDetector]:
    detector = create_detector("hog", upsample=1)
    detector.load()
    yield detector
    detector.close()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.suffix}-{f.codec}")
def test_faces_are_found_in_the_frames_that_show_one_at_their_timestamps(
    fmt: Format, tmp_path: Path, hog: FaceDetector
) -> None:
    video = make_video(tmp_path / f"clip{fmt.suffix}", fmt=fmt)
    info = probe(video)
    assert (info.width, info.height) == (960, 720)
    assert info.duration_s == pytest.approx(6.0, abs=0.15)
    frames = list(sample_frames(video, 5))
    found = {f.timestamp_ms: len(hog.detect(f.pixels)) for f in frames}
    assert found == FACES_AT
    assert all(f.pixels.shape == (720, 960, 3) and f.scale == 1.0 for f in frames)


def test_a_rotated_video_is_sampled_upright(tmp_path: Path, hog: FaceDetector) -> None:
    # a phone held upright: frames stored landscape, the display matrix turns them
    video = make_video(tmp_path / "portrait.mp4", rotation=-90)
    assert (probe(video).width, probe(video).height) == (960, 720)  # as stored
    frames = list(sample_frames(video, 5))
    assert all(f.pixels.shape == (960, 720, 3) for f in frames)
    assert all((f.original_width, f.original_height) == (720, 960) for f in frames)
    # upside down or on its side, HOG finds no face: found means upright
    assert {f.timestamp_ms: len(hog.detect(f.pixels)) for f in frames} == FACES_AT


def test_a_4k_video_is_capped_like_a_4k_photo(tmp_path: Path, hog: FaceDetector) -> None:
    video = make_video(tmp_path / "uhd.mp4", size=(3840, 2160), fps=2)
    frames = list(sample_frames(video, 5, max_dimension=1280, scale=0.5))
    assert [f.pixels.shape for f in frames] == [(360, 640, 3)] * 5
    assert all((f.original_width, f.original_height) == (3840, 2160) for f in frames)
    assert [len(hog.detect(f.pixels)) for f in frames] == [0, 1, 1, 1, 1]


def test_timestamps_are_the_decoded_frames_own(tmp_path: Path) -> None:
    # 7 fps: the points 1/6 .. 5/6 of 6 s fall between frames; each frame is the first
    # at or after its point (within half a frame), its timestamp its own
    video = make_video(tmp_path / "odd.mp4", fps=7, gop=30)
    stamps = [f.timestamp_ms for f in sample_frames(video, 5)]
    assert stamps == [round(k / 7 * 1000) for k in (7, 14, 21, 28, 35)]


def test_minimum_spacing_samples_fewer_frames_of_a_short_video(tmp_path: Path) -> None:
    assert sample_times(6.0, 5) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert sample_times(6.0, 5, min_spacing_s=2.0) == [2.0, 4.0]
    assert sample_times(1.0, 5, min_spacing_s=10.0) == [0.5]
    assert sample_times(None, 5) == [0.0]
    video = make_video(tmp_path / "short.webm", fmt=FORMATS[4])
    assert [f.timestamp_ms for f in sample_frames(video, 5, min_spacing_s=2.0)] == [2000, 4000]


def test_a_frame_is_given_once_when_the_video_is_shorter_than_its_points(
    tmp_path: Path,
) -> None:
    video = make_video(tmp_path / "blink.mp4", (Scene(0, 0.2, "obama.jpg"),), fps=10)
    stamps = [f.timestamp_ms for f in sample_frames(video, 5)]
    assert stamps == sorted(set(stamps))
    assert 1 <= len(stamps) <= 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (make_truncated, "cannot open video"),
        (make_audio_only, "no video stream"),
        (make_empty, "cannot open video"),
    ],
    ids=["truncated", "audio-only", "zero-byte"],
)
def test_broken_videos_are_decode_errors(tmp_path: Path, make: object, message: str) -> None:
    video = make(tmp_path / "broken.mp4")  # type: ignore[operator]
    with pytest.raises(ImageDecodeError, match=message):
        probe(video)
    with pytest.raises(ImageDecodeError, match=message):
        list(sample_frames(video, 5))


def test_a_video_cut_after_its_index_fails_where_its_frames_end(tmp_path: Path) -> None:
    # faststart-like: a Matroska file keeps its header first; cut, its later points are gone
    video = make_video(tmp_path / "cut.mkv", fmt=FORMATS[3])
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageDecodeError, match="no frame decodes"):
        list(sample_frames(video, 5))


def test_a_missing_or_escaping_video_is_typed(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    with pytest.raises(ImageMissing):
        list(load_video_frames(root, "gone.mp4", 5))
    outside = make_video(tmp_path / "outside.mp4")
    (root / "link.mp4").symlink_to(outside)
    with pytest.raises(ImagePermissionError):
        list(load_video_frames(root, "link.mp4", 5))


def test_decoding_past_the_deadline_is_a_timeout(tmp_path: Path) -> None:
    # one key frame for the whole video: every point is decoded from the start
    video = make_video(tmp_path / "longgop.mp4", BLACK_OBAMA_BIDEN, fmt=MP4_H264, gop=1000)
    with pytest.raises(DetectionTimeout, match="time limit"):
        list(sample_frames(video, 5, deadline=time.monotonic() - 1))
    assert len(list(sample_frames(video, 5, deadline=time.monotonic() + 60))) == 5
