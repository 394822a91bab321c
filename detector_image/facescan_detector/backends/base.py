"""The one interface every detection backend implements, and what they share.

The run loop codes against :class:`FaceDetector` and :class:`Face` only (it gets a
detector from :func:`facescan_detector.backends.create_detector`). Backends subclass
:class:`FaceDetector` and implement ``_load``/``_detect``/``_close``; the public
``load``/``detect``/``close`` here translate whatever the libraries raise into the
typed errors of :mod:`facescan_detector.errors` (Immich ``InferenceModel`` style).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from facescan_detector.errors import DetectorError, DetectorOOM, StartupError

log = logging.getLogger(__name__)

Pixels = npt.NDArray[np.uint8]
"""An H x W x 3 RGB image, uint8."""

Embedding = npt.NDArray[np.float32]

# Lower-cased fragments of the messages dlib, CUDA, ROCm and onnxruntime use when an
# allocation fails, and fragments that say the failing allocation was on a GPU.
_MEMORY_MARKERS = (
    "out of memory",
    "bad_alloc",
    "failed to allocate memory",
    "bfcarena",
    "cannot allocate memory",
    "memory allocation failed",
)
_GPU_MARKERS = ("cuda", "cudnn", "cublas", "hipmalloc", "rocm", "miopen", "migraphx", "gpu")


@dataclass(frozen=True)
class Face:
    """One face found by a detector, in the pixel coordinates of the array it was given.

    ``landmarks`` are five (x, y) points: for dlib the 5-point shape predictor's (eye
    corners and the base of the nose), for SCRFD the eye centres, the nose tip and the
    mouth corners. ``embedding`` is excluded from equality and repr (it is an array).
    """

    top: float
    right: float
    bottom: float
    left: float
    score: float
    landmarks: tuple[tuple[float, float], ...]
    embedding: Embedding = field(compare=False, repr=False)


class FaceDetector(ABC):
    """A face detector with its embedding model: ``load`` once, ``detect`` per image."""

    model_name: str
    """``hog``, ``cnn`` or ``insightface``."""
    embedding_dim: int
    """Length of every ``Face.embedding`` this detector returns."""

    def __init__(self) -> None:
        self._loaded = False

    @property
    def loaded(self) -> bool:
        """Whether the models are in memory."""
        return self._loaded

    @property
    def on_gpu(self) -> bool:
        """Whether detection runs on a GPU (decides how allocation failures are reported)."""
        return False

    def load(self) -> None:
        """Load the models this detector needs, and nothing else. Idempotent.

        Raises StartupError when a model file is missing or unreadable, DetectorOOM when
        memory runs out while loading.
        """
        if self._loaded:
            return
        try:
            self._load()
        except (StartupError, DetectorError):
            raise
        except Exception as exc:
            error = translate_error(exc, model=self.model_name, on_gpu=self.on_gpu)
            if isinstance(error, DetectorOOM):
                raise error from exc
            raise StartupError(f"cannot load the {self.model_name} model: {exc}") from exc
        self._loaded = True
        log.debug("loaded %s detector", self.model_name)

    def detect(self, pixels: Pixels, room_for_next: Callable[[], None] | None = None) -> list[Face]:
        """Find the faces in ``pixels`` (H x W x 3 uint8 RGB); loads the models if needed.

        ``room_for_next`` is called, once, from this thread or one of the backend's,
        when decoding the next image beside this detection would no longer take a CPU
        or memory the detection needs: at once where the backend leaves a CPU free, or
        once its peak has passed (two-thread HOG: when the largest pyramid level is
        scanned and freed).

        Raises DetectorOOM (``gpu`` says where) when memory runs out, DetectorError for
        any other failure of the backend; the library's exception is chained.
        """
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise DetectorError(
                f"expected an H x W x 3 uint8 RGB array, got {pixels.dtype} {pixels.shape}"
            )
        self.load()
        try:
            return self._detect(np.ascontiguousarray(pixels), room_for_next or _nothing)
        except DetectorError:
            raise
        except Exception as exc:
            raise translate_error(exc, model=self.model_name, on_gpu=self.on_gpu) from exc

    def close(self) -> None:
        """Free the models and sessions; a later ``detect`` loads them again."""
        if self._loaded:
            self._close()
        self._loaded = False

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _detect(self, pixels: Pixels, room_for_next: Callable[[], None]) -> list[Face]:
        """The faces; calls ``room_for_next()`` as :meth:`detect` says."""

    @abstractmethod
    def _close(self) -> None: ...


def _nothing() -> None:
    pass


def translate_error(exc: BaseException, *, model: str, on_gpu: bool) -> DetectorError:
    """The typed error for what a backend library raised (the caller chains ``exc``).

    Host allocation failures (MemoryError, ``std::bad_alloc``) are DetectorOOM(gpu=False);
    CUDA/ROCm/ONNX allocation failures on a GPU are DetectorOOM(gpu=True). An allocation
    message naming no device counts as GPU when the backend runs on one. Anything else
    is a DetectorError (``internal``) with the library's message.
    """
    if isinstance(exc, DetectorError):
        return exc
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if isinstance(exc, MemoryError) or "bad_alloc" in lowered:
        return DetectorOOM(f"{model}: host memory ran out ({message})", gpu=False)
    if any(marker in lowered for marker in _MEMORY_MARKERS):
        gpu = on_gpu or any(marker in lowered for marker in _GPU_MARKERS)
        where = "GPU" if gpu else "host"
        return DetectorOOM(f"{model}: {where} memory ran out ({message})", gpu=gpu)
    return DetectorError(f"{model} detection failed: {type(exc).__name__}: {message}")


def scale_face(face: Face, factor: float, width: int, height: int) -> Face:
    """Map a face found on an array resized by ``factor`` back to the original pixels.

    Coordinates are divided by ``factor``; the box is clipped to [0, width] x [0, height]
    (the original size); landmarks are scaled but not clipped (a landmark of a face cut
    by the border may lie outside). Score and embedding are unchanged.
    """
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")

    def clip(value: float, limit: int) -> float:
        return min(max(value / factor, 0.0), float(limit))

    return replace(
        face,
        top=clip(face.top, height),
        right=clip(face.right, width),
        bottom=clip(face.bottom, height),
        left=clip(face.left, width),
        landmarks=tuple((x / factor, y / factor) for x, y in face.landmarks),
    )


def freeze(vector: Any) -> Embedding:
    """A read-only float32 copy of an embedding (Face is frozen; so is its array)."""
    array = np.array(vector, dtype=np.float32).reshape(-1)
    array.setflags(write=False)
    return array
