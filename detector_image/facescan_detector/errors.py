"""Typed errors of the detector; each maps onto one closed failure type of the queue.

Raised by image loading and the detection backends, caught by the run loop, which
records ``error_type`` and the message (cause chained) for the image being processed.
"""

from __future__ import annotations

from facescan_queue.types import ErrorType


class DetectorError(Exception):
    """Base of every error the detector reports about one image."""

    error_type: ErrorType = ErrorType.INTERNAL


class ImageDecodeError(DetectorError):
    """Corrupt, truncated, empty, unsupported or oversized (decompression bomb) file."""

    error_type = ErrorType.DECODE


class ImageMissing(DetectorError):
    """The file does not exist."""

    error_type = ErrorType.MISSING


class ImagePermissionError(DetectorError):
    """The file cannot be read, or its path (or a symlink) escapes the library root."""

    error_type = ErrorType.PERMISSION


class DetectorOOM(DetectorError):
    """Memory ran out: host (MemoryError, std::bad_alloc) or GPU (CUDA/ONNX allocation)."""

    error_type = ErrorType.OOM

    def __init__(self, message: str, *, gpu: bool = False) -> None:
        super().__init__(message)
        self.gpu = gpu


class DetectionTimeout(DetectorError):
    """Detection of one image ran past the per-image timeout."""

    error_type = ErrorType.TIMEOUT


class DetectorUnavailable(DetectorError):
    """Not the image's fault: the database, the library mount or the GPU is down."""

    error_type = ErrorType.UNAVAILABLE


class StartupError(Exception):
    """The detector cannot start at all (unknown model, missing model directory).

    Not charged to any image: the process exits non-zero with this message.
    """


class UnknownModel(StartupError):
    """A model name no backend serves."""
