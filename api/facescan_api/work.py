"""What runs inside each worker process of the API's pool: one detector, loaded once.

The pool (``facescan_api.pool``) starts each worker with :func:`init` (the backend of
the configured model is created and loaded there, never per request), asks it
:func:`hello` (its pid, loaded models, GPU) and sends it uploads with :func:`detect`.
An upload is written to the worker's private temporary directory and read by the
detector's own ``load_image`` (EXIF orientation, HEIC, decompression-bomb guard, max
dimension), then detected with the model's cascade: on a memory error the next step
(a smaller scale, then hog), as the detector's queue does. Every outcome crosses the
process boundary as a plain value: :class:`Detected` or :class:`Refused` (an HTTP status
and a typed error chosen here, where the exception's cause is still known).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from multiprocessing.util import Finalize
from pathlib import Path
from typing import cast

from PIL import Image, UnidentifiedImageError

from facescan_api.models import EmbeddingModel, ErrorType, ModelName
from facescan_detector.backends import FaceDetector, create_detector, scale_face
from facescan_detector.backends.hardware import describe_hardware
from facescan_detector.errors import (
    DetectorError,
    DetectorOOM,
    ImageDecodeError,
    StartupError,
)
from facescan_detector.loading import load_image
from facescan_detector.memory import tune_malloc
from facescan_queue.defaults import CASCADES
from facescan_queue.types import ErrorType as FailureType

UPLOAD = "upload"
"""The name an upload is written under (messages say ``upload: ...``); never the
client's file name."""

EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "hog": "dlib",
    "cnn": "dlib",
    "insightface": "arcface",
}
"""The embedding each model's faces carry: dlib's 128-d ResNet or ArcFace's 512-d."""


@dataclass(frozen=True)
class WorkerConfig:
    """How every worker of the pool detects."""

    model: str
    upsample: int
    threads: int
    model_dir: Path | None
    max_dimension: int


@dataclass(frozen=True)
class WorkerInfo:
    """A started worker, as it describes itself (``error``: why it cannot detect)."""

    pid: int
    models: tuple[str, ...]
    gpu_available: bool
    on_gpu: bool
    error: str | None = None


@dataclass(frozen=True)
class DetectedFace:
    """One face in original pixels as a person sees the image (after EXIF orientation)."""

    top: int
    right: int
    bottom: int
    left: int
    score: float
    landmarks: tuple[tuple[float, float], ...]
    embedding: tuple[float, ...]


@dataclass(frozen=True)
class Detected:
    faces: tuple[DetectedFace, ...]
    width: int
    height: int
    model: ModelName
    scale: float
    embedding_model: EmbeddingModel
    degraded: bool
    """Found at a reduced scale or by hog after memory ran out at the first step."""


@dataclass(frozen=True)
class Refused:
    """The upload cannot be detected: the HTTP status and the typed error to answer."""

    status: int
    error: ErrorType
    detail: str


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.detectors: dict[str, FaceDetector] = {}
        self.directory = Path(tempfile.mkdtemp(prefix="facescan-api-"))
        # removed when the process exits normally (multiprocessing runs its finalizers)
        Finalize(
            self,
            shutil.rmtree,
            args=(self.directory,),
            kwargs={"ignore_errors": True},
            exitpriority=0,
        )
        self.error: str | None = None

    def detector(self, model: str) -> FaceDetector:
        found = self.detectors.get(model)
        if found is None:
            found = create_detector(
                model,
                upsample=self.config.upsample,
                threads=self.config.threads,
                model_dir=self.config.model_dir if model == "insightface" else None,
            )
            found.load()
            self.detectors[model] = found
        return found


_worker: _Worker | None = None
"""This process's worker (each pool process has exactly one, made by ``init``)."""


def init(config: WorkerConfig) -> None:
    """The pool's initializer: load the configured model once. A model that cannot load
    is kept as ``error`` (``hello`` reports it, and the server refuses to start)."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    tune_malloc()
    _worker = _Worker(config)
    try:
        _worker.detector(config.model)
    except (StartupError, DetectorError) as exc:
        _worker.error = str(exc)


def _current() -> _Worker:
    if _worker is None:
        raise RuntimeError("facescan_api.work.init did not run in this process")
    return _worker


def hello() -> WorkerInfo:
    worker = _current()
    hardware = describe_hardware()
    gpu = (hardware.dlib_cuda and hardware.dlib_cuda_devices > 0) or any(
        name != "CPUExecutionProvider" for name in hardware.selected_providers
    )
    return WorkerInfo(
        pid=os.getpid(),
        models=tuple(sorted(m for m, d in worker.detectors.items() if d.loaded)),
        gpu_available=gpu,
        on_gpu=any(d.on_gpu for d in worker.detectors.values()),
        error=worker.error,
    )


def detect(data: bytes) -> Detected | Refused:
    """The faces in one uploaded file, or why there are none to give."""
    worker = _current()
    path = worker.directory / UPLOAD
    path.write_bytes(data)
    try:
        return _cascade(worker, worker.config)
    finally:
        path.unlink(missing_ok=True)


def _cascade(worker: _Worker, config: WorkerConfig) -> Detected | Refused:
    last: DetectorOOM | None = None
    for step, (model, scale) in enumerate(CASCADES[config.model]):
        try:
            loaded = load_image(
                worker.directory, UPLOAD, max_dimension=config.max_dimension, scale=scale
            )
            faces = worker.detector(model).detect(loaded.pixels)
        except DetectorOOM as exc:
            last = exc  # the next step: a smaller scale, then hog
            continue
        except ImageDecodeError as exc:
            return _decode_refusal(exc, worker.directory / UPLOAD)
        except StartupError as exc:
            return Refused(503, "model_unavailable", str(exc))
        except DetectorError as exc:
            if exc.error_type is FailureType.UNAVAILABLE:
                return Refused(503, "unavailable", str(exc))
            return Refused(500, "internal", f"{type(exc).__name__}: {exc}")
        width, height = loaded.original_width, loaded.original_height
        found = []
        for face in faces:
            f = scale_face(face, loaded.scale, width, height)
            found.append(
                DetectedFace(
                    top=round(f.top),
                    right=round(f.right),
                    bottom=round(f.bottom),
                    left=round(f.left),
                    score=float(f.score),
                    landmarks=tuple((float(x), float(y)) for x, y in f.landmarks),
                    embedding=tuple(float(v) for v in f.embedding),
                )
            )
        return Detected(
            faces=tuple(found),
            width=width,
            height=height,
            model=cast(ModelName, model),  # a cascade holds only these
            scale=scale,
            embedding_model=EMBEDDING_MODELS[model],
            degraded=step > 0,
        )
    return Refused(
        413,
        "image_too_large",
        f"memory ran out at every step of the {config.model} cascade: {last}",
    )


def _decode_refusal(exc: ImageDecodeError, path: Path) -> Refused:
    """413 for the decompression-bomb guard, 415 for a file no decoder recognises, 422
    for an image of a known format that cannot be decoded (corrupt, truncated)."""
    cause = exc.__cause__
    if isinstance(cause, Image.DecompressionBombError) or "decompression bomb" in str(exc):
        return Refused(413, "image_too_large", str(exc))
    if isinstance(cause, UnidentifiedImageError):  # its message names a descriptor
        if not _claimed(path):
            return Refused(
                415, "unsupported_image", f"{UPLOAD}: not an image format facescan reads"
            )
        detail = f"{UPLOAD}: cannot decode image: damaged, or a variant of its format not read"
        return Refused(422, "undecodable_image", detail)
    return Refused(422, "undecodable_image", str(exc))


def _claimed(path: Path) -> bool:
    """Whether a decoder claims the file's first bytes (as Pillow's open asks each one):
    then the file is a known format, damaged, rather than no image at all."""
    Image.init()
    with path.open("rb") as file:
        prefix = file.read(16)
    for _, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(prefix) is True:
                return True
        except Exception:  # a plugin's check of a prefix shorter than it reads (struct)
            continue
    return False
