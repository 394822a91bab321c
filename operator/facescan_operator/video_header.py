"""A video's facts for registration, read from its container header only (no frame is
decoded): the frame size, which right-sizes it like a photo of that size, and the
duration. Called by registration for files with a video suffix.

PyAV opens the container with the smallest probe FFmpeg allows, so it reads the header
(an MP4's index, a Matroska file's first cluster headers): tens of kilobytes, however
long the video. A header that cannot be read gives no facts; the file is registered
anyway and the detector records why it cannot be decoded (as for an image). PyAV is the
detector's dependency (its image runs the register Job; `facescan scan` installs it):
without it a video is registered without facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
"""File name suffixes (any case) registered as videos."""

_HEADER_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fpsprobesize": "0"}


@dataclass(frozen=True)
class VideoHeader:
    """Frame size as stored (before any display rotation) and duration, when known."""

    width: int | None
    height: int | None
    duration_ms: int | None


def read_video_header(file: BinaryIO) -> VideoHeader:
    """The header facts of the video open in ``file`` (binary, seekable); all None when
    the container cannot be read or has no video stream."""
    try:
        import av  # ~50 ms and ~30 MB: only once a video is met
    except ImportError:  # the operator's extra alone: the detector's image has PyAV
        return VideoHeader(None, None, None)
    try:
        with av.open(file, "r", options=_HEADER_OPTIONS) as container:
            if not container.streams.video:
                return VideoHeader(None, None, None)
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            duration = None
            if stream.duration and stream.time_base is not None and stream.duration > 0:
                duration = round(float(stream.duration * stream.time_base) * 1000)
            elif container.duration is not None and container.duration > 0:
                duration = round(container.duration / av.time_base * 1000)
    except Exception:  # unreadable: registered without facts, the detector says why
        return VideoHeader(None, None, None)
    return VideoHeader(width or None, height or None, duration)
