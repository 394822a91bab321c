"""A /process job's media is told a video or a photo by its first bytes: every video
container the scan registers, and every photo format the loader reads (HEIC and AVIF
are ISO base media files too, like MP4)."""

from __future__ import annotations

from pathlib import Path

import pillow_heif
import pytest
from PIL import Image

from facescan_api.media_kind import kind_of, kind_of_file, video_facts
from tests.videos import (
    AVI_MJPEG,
    M4V_MPEG4,
    MKV_VP9,
    MOV_H264,
    MP4_H264,
    WEBM_VP8,
    Format,
    make_audio_only,
    make_video,
)

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@pytest.mark.parametrize(
    "fmt", [MP4_H264, MOV_H264, M4V_MPEG4, MKV_VP9, WEBM_VP8, AVI_MJPEG], ids=lambda f: f.suffix
)
def test_every_video_container_is_a_video(tmp_path: Path, fmt: Format) -> None:
    clip = make_video(tmp_path / f"clip{fmt.suffix}", fmt=fmt, size=(320, 240), frames=3)
    kept = clip.rename(tmp_path / "kept-without-suffix")

    assert kind_of_file(kept) == "video"
    width, height, _ = video_facts(kept)
    assert (width, height) == (320, 240)


def test_photos_are_photos_heic_included(tmp_path: Path) -> None:
    heif = pillow_heif.from_pillow(Image.open(SAMPLES / "obama.jpg"))
    heif.save(tmp_path / "p.heic", quality=50)
    for path in (SAMPLES / "obama.jpg", SAMPLES / "astronaut.png", tmp_path / "p.heic"):
        assert kind_of_file(path) == "image", path


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "image"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", "video"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "video"),  # QuickTime without ftyp
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "image"),  # not AVI: the loader says what it is
        (b"", "image"),
    ],
)
def test_signatures(head: bytes, kind: str) -> None:
    assert kind_of(head) == kind


def test_a_video_without_a_video_stream_has_no_facts(tmp_path: Path) -> None:
    memo = make_audio_only(tmp_path / "memo.mp4")

    assert kind_of_file(memo) == "video"  # the detector types it: decode
    assert video_facts(memo) == (None, None, None)
