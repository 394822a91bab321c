"""Registering videos: every video suffix in any case, frame size and duration read from
the container header alone (a few tens of kilobytes, however long the video), broken
ones registered without facts for the detector to type."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from facescan_operator.registration import read_header, scan_directory
from facescan_operator.video_header import read_video_header
from tests.videos import (
    FORMATS,
    make_audio_only,
    make_empty,
    make_truncated,
    make_video,
)


def test_every_video_suffix_in_any_case_is_registered_as_a_video(tmp_path: Path) -> None:
    for n, fmt in enumerate(FORMATS):
        suffix = fmt.suffix.upper() if n % 2 else fmt.suffix
        make_video(tmp_path / f"clip{n}{suffix}", fmt=fmt, size=(320, 240))
    (tmp_path / "notes.txt").write_text("not a video")
    images = scan_directory(tmp_path)
    assert sorted(i.path for i in images) == sorted(
        f"clip{n}{f.suffix.upper() if n % 2 else f.suffix}" for n, f in enumerate(FORMATS)
    )
    for image in images:
        assert image.kind == "video", image.path
        assert (image.width, image.height) == (320, 240), image.path
        assert image.duration_ms is not None
        assert abs(image.duration_ms - 6000) <= 150, image.path


class _Counting(io.RawIOBase):
    """A file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = self.file.readinto(buffer)
        self.read_bytes += n or 0
        return n or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()
        super().close()


def test_only_the_header_of_a_long_4k_video_is_read(tmp_path: Path) -> None:
    video = make_video(tmp_path / "uhd.mp4", size=(3840, 2160), fps=2)
    with _Counting(video) as file:
        header = read_video_header(file)  # type: ignore[arg-type]
        assert (header.width, header.height, header.duration_ms) == (3840, 2160, 6000)
        assert file.read_bytes < 200_000 < video.stat().st_size // 10


@pytest.mark.parametrize("make", [make_truncated, make_audio_only, make_empty])
def test_a_broken_video_is_registered_without_facts(tmp_path: Path, make: object) -> None:
    video = make(tmp_path / "broken.mp4")  # type: ignore[operator]
    image = read_header(video)
    assert image.kind == "video"
    assert (image.width, image.height, image.duration_ms) == (None, None, None)
    assert image.file_bytes == video.stat().st_size
