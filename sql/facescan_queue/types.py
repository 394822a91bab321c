"""Closed vocabularies shared by every part of facescan: image states and failure types.

These mirror the PostgreSQL enums in ``schema.sql``; a test keeps them equal.
"""

from enum import StrEnum


class ImageState(StrEnum):
    """Where an image stands in the queue (``facescan.image_state``)."""

    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class ErrorType(StrEnum):
    """Why an attempt failed (``facescan.error_type``); each has its own retry policy."""

    OOM = "oom"
    """Out of memory: host OOM kill, MemoryError, CUDA/ONNX allocation failure."""
    TIMEOUT = "timeout"
    """Detection ran past the per-image timeout."""
    DECODE = "decode"
    """The file is corrupt, truncated or not a supported image."""
    MISSING = "missing"
    """The file does not exist (any more)."""
    PERMISSION = "permission"
    """The file cannot be read, or its path escapes the library root."""
    CRASH = "crash"
    """The worker died while processing the image and left no reason."""
    UNAVAILABLE = "unavailable"
    """Not the image's fault: database, mount or GPU down. Does not burn attempts."""
    INTERNAL = "internal"
    """A bug in facescan."""
