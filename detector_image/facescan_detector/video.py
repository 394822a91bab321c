"""Video files: reading a video's facts from its container header, and decoding the few
frames that stand for it, upright and capped like an image, with their timestamps.

Called by the run loop for a queue item of kind video (one item per video; its faces are
those of its sampled frames, committed together). Decoding uses PyAV, whose wheels carry
FFmpeg's libraries: no system FFmpeg is needed.

Sampling: ``count`` points evenly spaced over the duration (1/6, 2/6, ... 5/6 for 5),
fewer where a minimum spacing asks for it, at least one. For each point the demuxer
seeks to the key frame at or before it, and frames are decoded forward to the first one
at or after the point (within half a frame); only that frame is converted, by libswscale,
straight from the decoder's pixel format to RGB at the capped size (no full-size RGB
copy), then turned by the display matrix (a phone's portrait video plays upright). One
decoded frame is alive at a time beside the decoder's reference frames, and the decoder
runs on ``DECODE_THREADS`` threads, so memory depends on the frame size, never on the
video's length: a 4K frame costs what a 4K photo costs.

Failures are the detector's typed errors: a container that cannot be read, a file with
no video stream or a point where no frame decodes -> decode; gone -> missing; a decode
past the deadline (a huge group of pictures decoded frame by frame) -> timeout, checked
between packets so the decoding thread stops by itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
import numpy as np

from facescan_detector.errors import (
    DetectionTimeout,
    DetectorError,
    DetectorOOM,
    ImageDecodeError,
)
from facescan_detector.loading import open_regular, os_error

DECODE_THREADS = 2
"""Decoder threads per video: each frame-thread holds a frame of its own, so memory
grows with them; two decode a 1080p H.264 frame about 1.6x faster than one."""

_HEADER_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fpsprobesize": "0"}
"""Read no more than the container's header needs (no packets probed for stream facts
the header already has)."""


@dataclass(frozen=True)
class VideoInfo:
    """A video's facts from its container header."""

    duration_s: float | None
    """None where the container does not say (then only the first frame is sampled)."""
    width: int
    """As stored (before the display matrix turns it), like an image's header size."""
    height: int
    codec: str


@dataclass(frozen=True)
class SampledFrame:
    """One decoded frame, ready for detection."""

    timestamp_ms: int
    """Presentation time from the start of the video."""
    pixels: np.ndarray
    """HxWx3 uint8 RGB, C-contiguous, display orientation, capped and scaled."""
    original_width: int
    """The frame's full width in display orientation (face boxes are in these pixels)."""
    original_height: int

    @property
    def scale(self) -> float:
        """``pixels`` width / original width."""
        return float(self.pixels.shape[1] / self.original_width)


def sample_times(duration_s: float | None, count: int, min_spacing_s: float = 0.0) -> list[float]:
    """The points (seconds from the start) at which a video of ``duration_s`` is
    sampled: ``count`` evenly spaced inside it, fewer if they would be closer than
    ``min_spacing_s``, at least one (the middle); [0.0] when the duration is unknown."""
    if count < 1:
        raise ValueError(f"need at least one frame per video, got {count}")
    if not duration_s or duration_s <= 0:
        return [0.0]
    if min_spacing_s > 0:
        count = max(1, min(count, math.floor(duration_s / min_spacing_s) - 1))
    return [duration_s * k / (count + 1) for k in range(1, count + 1)]


def probe(source: Path | BinaryIO, *, name: str | None = None) -> VideoInfo:
    """The header facts of the video at ``source`` (a path, or a file open for reading
    in binary); ImageDecodeError when it cannot be read or has no video stream."""
    label = name or str(getattr(source, "name", source))
    with _container(source, label) as container:
        return _info(container, label)


@contextmanager
def _container(source: Path | BinaryIO, label: str) -> Iterator[av.container.InputContainer]:
    try:
        container = av.open(
            source if not isinstance(source, Path) else str(source), "r", options=_HEADER_OPTIONS
        )
    except Exception as exc:
        raise _typed(exc, label, "open") from exc
    try:
        yield container
    finally:
        container.close()


def _info(container: av.container.InputContainer, label: str) -> VideoInfo:
    if not container.streams.video:
        raise ImageDecodeError(f"{label}: cannot decode video: no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{label}: cannot decode video: no frame size in its header")
    duration = None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / av.time_base
    return VideoInfo(duration, width, height, stream.codec_context.name)


def load_video_frames(
    root: Path,
    relative_path: str,
    count: int,
    *,
    min_spacing_s: float = 0.0,
    max_dimension: int = 1280,
    scale: float = 1.0,
    deadline: float | None = None,
) -> Generator[SampledFrame]:
    """sample_frames of ``root / relative_path``, opened beneath the library root as an
    image is (a path or link leading out is refused, typed errors for the file)."""
    file, _ = open_regular(root, relative_path)
    with file:
        yield from sample_frames(
            file,
            count,
            min_spacing_s=min_spacing_s,
            max_dimension=max_dimension,
            scale=scale,
            deadline=deadline,
            name=relative_path,
        )


def sample_frames(
    source: Path | BinaryIO,
    count: int,
    *,
    min_spacing_s: float = 0.0,
    max_dimension: int = 1280,
    scale: float = 1.0,
    deadline: float | None = None,
    name: str | None = None,
) -> Iterator[SampledFrame]:
    """The frames at sample_times(duration, count, min_spacing_s), each with its long
    side at ``min(long side, max_dimension) * scale`` (``max_dimension`` 0: no cap),
    display orientation. A frame already given (a video shorter than its points are
    apart) is not given twice. ``deadline``: a time.monotonic() past which decoding
    stops with DetectionTimeout."""
    if not (0 < scale < math.inf) or max_dimension < 0:
        raise ValueError(f"need 0 < scale < inf and max_dimension >= 0: {scale}, {max_dimension}")
    label = name or str(getattr(source, "name", source))
    with _container(source, label) as container:
        info = _info(container, label)
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS
        stream.codec_context.thread_type = "AUTO"
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time and base else 0.0
        rate = stream.average_rate or stream.guessed_rate
        half_frame = 0.5 / float(rate) if rate else 0.0
        given: set[int] = set()
        for point in sample_times(info.duration_s, count, min_spacing_s):
            try:
                frame = _frame_at(container, stream, start + point, half_frame, deadline, label)
            except DetectorError:
                raise
            except Exception as exc:
                raise _typed(exc, label, "decode") from exc
            if frame.pts is not None:
                if frame.pts in given:
                    continue
                given.add(frame.pts)
            try:
                yield _convert(frame, start, max_dimension, scale)
            except MemoryError as exc:
                raise DetectorOOM(f"{label}: out of memory converting a frame: {exc}") from exc


def _frame_at(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    target_s: float,
    half_frame: float,
    deadline: float | None,
    label: str,
) -> av.VideoFrame:
    """The first frame at or after ``target_s`` (within half a frame), decoded forward
    from the key frame at or before it."""
    assert stream.time_base is not None
    # a container without an index (some AVI) cannot seek: decode on from where it is
    with contextlib.suppress(av.error.FFmpegError):
        container.seek(int(target_s / stream.time_base), stream=stream, backward=True)
    last: av.VideoFrame | None = None
    for packet in container.demux(stream):
        if deadline is not None and time.monotonic() > deadline:
            raise DetectionTimeout(
                f"{label}: decoding to the frame at {target_s:.2f} s ran past the time limit"
            )
        for frame in packet.decode():
            if frame.time is None:
                continue
            if frame.time + half_frame >= target_s:
                return frame
            last = frame
    if last is not None and target_s - last.time < 1.0:
        return last  # the last frame, just before a point near the end
    raise ImageDecodeError(
        f"{label}: cannot decode video: no frame decodes at {target_s:.2f} s (truncated or corrupt)"
    )


def _convert(
    frame: av.VideoFrame, start_s: float, max_dimension: int, scale: float
) -> SampledFrame:
    """RGB at the capped size in one libswscale pass, then turned upright."""
    width, height = frame.width, frame.height
    turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns to display
    long_side = max(width, height)
    capped = min(long_side, max_dimension) if max_dimension else long_side
    target_long = max(1, round(capped * scale))
    short = max(1, round(min(width, height) * target_long / long_side))
    size = (target_long, short) if width >= height else (short, target_long)
    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    pixels: np.ndarray = rgb.to_ndarray()
    if turns:
        pixels = np.ascontiguousarray(np.rot90(pixels, k=turns))
    display = (height, width) if turns % 2 else (width, height)
    time_s = (frame.time or 0.0) - start_s
    return SampledFrame(max(0, round(time_s * 1000)), pixels, display[0], display[1])


def _typed(exc: BaseException, label: str, action: str) -> DetectorError:
    """The detector's typed error for what PyAV (FFmpeg) raised on a video."""
    if isinstance(exc, DetectorError):
        return exc
    if isinstance(exc, MemoryError):
        return DetectorOOM(f"{label}: out of memory while decoding: {exc}")
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error(exc, label, "read")
    return ImageDecodeError(f"{label}: cannot {action} video: {exc}")
