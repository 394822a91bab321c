"""Test videos made with PyAV from the bundled photographs: scenes of known time ranges
(black, or a sample photo on black), in several containers and codecs, plus a rotated
one, a 4K one, a truncated one, an audio-only one and an empty one.

Used by the video tests (tests/unit/detector/test_video*.py, the detector's and the
scan's integration tests) and by bench/video_bench.py; nothing is downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@dataclass(frozen=True)
class Scene:
    """``photo`` (a sample's file name; None: black) shown from ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    photo: str | None = None


BLACK_OBAMA_BIDEN = (Scene(0, 2), Scene(2, 4, "obama.jpg"), Scene(4, 6, "biden.jpg"))
"""6 s: black, then obama.jpg, then biden.jpg, 2 s each. Sampled 5 times (at 1, 2, 3,
4 and 5 s) it shows no face at 1 s, Obama at 2 and 3 s, Biden at 4 and 5 s."""

OBAMA_THROUGHOUT = (Scene(0, 6, "obama.jpg"),)
"""6 s of obama.jpg: one person in every sampled frame (one track)."""


@dataclass(frozen=True)
class Format:
    """A container and a video codec, as a phone or a camera writes them."""

    suffix: str
    codec: str
    pix_fmt: str = "yuv420p"
    options: tuple[tuple[str, str], ...] = ()


MP4_H264 = Format(".mp4", "libx264", options=(("preset", "ultrafast"),))
MOV_H264 = Format(".mov", "libx264", options=(("preset", "ultrafast"),))
M4V_MPEG4 = Format(".m4v", "mpeg4", options=(("qscale", "3"),))
MKV_VP9 = Format(".mkv", "libvpx-vp9", options=(("deadline", "realtime"), ("cpu-used", "8")))
WEBM_VP8 = Format(".webm", "libvpx", options=(("deadline", "realtime"), ("cpu-used", "8")))
AVI_MJPEG = Format(".avi", "mjpeg", pix_fmt="yuvj420p")
FORMATS = (MP4_H264, MOV_H264, M4V_MPEG4, MKV_VP9, WEBM_VP8, AVI_MJPEG)


@functools.cache
def _canvas(photo: str | None, width: int, height: int) -> np.ndarray:
    """The RGB frame of a scene: the photo fitted inside width x height, on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if photo is None:
        return canvas
    with Image.open(SAMPLES / photo) as image:
        rgb = image.convert("RGB")
    factor = min(width / rgb.width, height / rgb.height)
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    fitted = np.asarray(rgb.resize(size, Image.Resampling.LANCZOS))
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = fitted
    canvas.flags.writeable = False
    return canvas


def make_video(
    path: Path,
    scenes: Sequence[Scene] = BLACK_OBAMA_BIDEN,
    *,
    fmt: Format = MP4_H264,
    size: tuple[int, int] = (960, 720),
    fps: int = 5,
    gop: int | None = None,
    rotation: int = 0,
    frames: int | None = None,
) -> Path:
    """Writes ``scenes`` as a video of ``size`` (width, height as stored) at ``fps``,
    a key frame every ``gop`` frames (default: every second). ``rotation``: the display
    matrix's counter-clockwise degrees (a phone held upright records 90 or -90);
    the stored frames are the scenes turned the other way, so the video plays upright.
    ``frames``: write only this many frames (a clip of a long video's start)."""
    width, height = size
    end = max(scene.end_s for scene in scenes)
    total = round(end * fps) if frames is None else frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream(fmt.codec, rate=fps, options=dict(fmt.options))
        stream.width, stream.height = width, height
        stream.pix_fmt = fmt.pix_fmt
        stream.codec_context.gop_size = gop or fps
        stream.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        turns = (-rotation // 90) % 4
        display = (height, width) if turns % 2 else (width, height)
        for index in range(total):
            t = index / fps
            scene = next((s for s in scenes if s.start_s <= t < s.end_s), scenes[-1])
            pixels = np.ascontiguousarray(np.rot90(_canvas(scene.photo, *display), k=turns))
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_truncated(path: Path, **kwargs: object) -> Path:
    """An MP4 cut to its first half (its index, written last, is gone): as a copy
    interrupted part-way leaves it."""
    make_video(path, **kwargs)  # type: ignore[arg-type]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An .mp4 holding one AAC audio stream and no video stream (a voice memo)."""
    rate = 44100
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = int(seconds * rate)
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_empty(path: Path) -> Path:
    """A zero-byte file named like a video."""
    path.write_bytes(b"")
    return path
