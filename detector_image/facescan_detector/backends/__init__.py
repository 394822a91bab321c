"""Detection backends behind one interface, and the factory the run loop and calibrate use.

``create_detector("hog" | "cnn" | "insightface", ...)`` returns a :class:`FaceDetector`;
anything else raises :class:`~facescan_detector.errors.UnknownModel`. Backend modules
are imported on demand, so a HOG process never imports onnxruntime and never loads the
CNN or the 68-point model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from facescan_detector.backends.base import Face, FaceDetector, scale_face, translate_error
from facescan_detector.errors import UnknownModel

__all__ = [
    "DEFAULT_INSIGHTFACE_DIR",
    "MODELS",
    "Face",
    "FaceDetector",
    "create_detector",
    "scale_face",
    "translate_error",
]

MODELS = ("hog", "cnn", "insightface")
"""Every model name ``create_detector`` serves."""

DEFAULT_INSIGHTFACE_DIR = Path("~/.insightface/models/buffalo_l")
"""Where insightface's ``FaceAnalysis()`` keeps buffalo_l; used when no model_dir is given."""


def create_detector(
    model: str,
    *,
    upsample: int = 1,
    threads: int = 1,
    model_dir: Path | None = None,
    providers: Sequence[str] | None = None,
) -> FaceDetector:
    """A detector for ``model``, not yet loaded (``load()`` or the first ``detect()`` does).

    ``upsample`` is dlib's number of upsamplings (HOG and CNN; SCRFD has a fixed input
    size). ``threads`` is how many CPU threads HOG may use (two at most are used).
    ``model_dir`` holds the dlib ``.dat`` files (default: face_recognition_models)
    or the InsightFace ONNX pair (default: ``DEFAULT_INSIGHTFACE_DIR``). ``providers``
    overrides the onnxruntime execution providers (default: best available).
    """
    if model in ("hog", "cnn"):
        from facescan_detector.backends.dlib_backend import DlibDetector

        return DlibDetector(model, upsample=upsample, threads=threads, model_dir=model_dir)
    if model == "insightface":
        from facescan_detector.backends.insightface_backend import InsightFaceDetector

        directory = model_dir if model_dir is not None else DEFAULT_INSIGHTFACE_DIR.expanduser()
        return InsightFaceDetector(directory, providers=providers)
    raise UnknownModel(f"unknown detection model {model!r}; choose one of {', '.join(MODELS)}")
