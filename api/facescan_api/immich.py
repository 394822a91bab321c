"""Immich's machine-learning API for its facial-recognition task: POST /predict and
GET /ping (an APIRouter), so that an Immich server whose machine-learning URL points at
``facescan serve --immich`` gets its faces from facescan's worker pool.

Included by ``create_app`` (``facescan_api.app``); without --immich the router is empty
(both paths 404). The contract is Immich's own: its ML server
(machine-learning/immich_ml/main.py ``predict``, schemas.py) and its client
(server/src/repositories/machine-learning.repository.ts). A multipart form with
``entries`` (JSON: task -> model type -> {modelName, options}) and an ``image`` file
(``text`` for clip's textual model); the answer ``{"facial-recognition": [{boundingBox:
{x1, y1, x2, y2}, embedding: "<JSON array>", score}], imageHeight, imageWidth}``.

Immich's server sends no API key (``fetch(new URL('/predict', url))``: no header, and
the URL's path and query are dropped), so ``guard`` serves both paths without one when
--immich is set. Immich stores 512-d ArcFace vectors of the InsightFace pack it names,
so faces are answered only with the embeddings of that pack's recognizer (serve
refuses --immich without --model insightface). clip, ocr and packs facescan does not
run are answered 501 model_unavailable: Immich then tries its next URL, as when its own
server cannot load a model (a 500 there). Errors are the API's typed bodies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from facescan_api.guard import error_response
from facescan_api.models import ErrorBody
from facescan_api.pool import DetectorPool
from facescan_api.uploads import detect
from facescan_api.work import Detected
from facescan_detector.backends import DEFAULT_INSIGHTFACE_DIR

IMMICH_PATHS = frozenset({"/ping", "/predict"})
"""Served without a key when --immich is set (``guard``)."""

FACIAL_RECOGNITION = "facial-recognition"

RECOGNIZERS = {
    "buffalo_l": "w600k_r50.onnx",
    "buffalo_m": "w600k_r50.onnx",
    "buffalo_s": "w600k_mbf.onnx",
    "antelopev2": "glintr100.onnx",
}
"""Immich's InsightFace packs (immich_ml/models/constants.py) and each one's recognizer:
embeddings compare only with those of the same recognizer."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "No `entries`, neither `image` nor `text`, facial-recognition without an "
        "image, or an empty image (invalid_request).",
        413: "Body over --max-upload-mb (upload_too_large); image over the decompression "
        "bomb guard, or memory ran out at every InsightFace step (image_too_large).",
        415: "Not an image format the detector reads (unsupported_image).",
        422: "`entries` is not Immich's JSON (invalid_request); a known format that cannot "
        "be decoded (undecodable_image); past --timeout (image_timeout).",
        501: "A task facescan does not serve (clip, ocr), or an InsightFace pack whose "
        "recognizer is not in --model-dir (model_unavailable).",
        503: "Every worker busy and the queue full (busy), or the worker died "
        "(worker_lost): Retry-After says when to retry.",
    }.items()
}


class PipelineEntry(BaseModel):
    """One model of an Immich request (schemas.py ``PipelineEntry``)."""

    modelName: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class DetectionOptions(BaseModel):
    minScore: float = Field(default=0.7, ge=0, le=1, allow_inf_nan=False)
    """Immich's FaceDetector default when no minScore is given."""


_Entries = TypeAdapter(dict[str, dict[str, PipelineEntry]])


class BoundingBox(BaseModel):
    """In pixels of the uploaded image, as a person sees it."""

    x1: int
    y1: int
    x2: int
    y2: int


class ImmichFace(BaseModel):
    boundingBox: BoundingBox
    embedding: str = Field(description="The 512-d ArcFace embedding as a JSON array.")
    score: float


class PredictResponse(BaseModel):
    """Immich's ``FacialRecognitionResponse`` (machine-learning.repository.ts)."""

    faces: list[ImmichFace] = Field(alias="facial-recognition")
    imageHeight: int
    imageWidth: int


class EntriesError(ValueError):
    """``entries`` is not a request of Immich's shape."""


@dataclass(frozen=True)
class FaceRequest:
    """What an Immich facial-recognition request asks for."""

    model_name: str
    """The recognition model: an InsightFace pack, e.g. buffalo_l."""
    min_score: float


def read_entries(raw: str) -> tuple[FaceRequest | None, list[str]]:
    """The facial-recognition request in ``raw`` (None if it names none) and the other
    tasks it names; EntriesError when it is malformed."""
    try:
        entries = _Entries.validate_json(raw)
        if not entries:
            raise EntriesError("entries names no task")
        others = sorted(task for task in entries if task != FACIAL_RECOGNITION)
        face = entries.get(FACIAL_RECOGNITION)
        if face is None:
            return None, others
        if "detection" not in face or "recognition" not in face:
            raise EntriesError(
                f"{FACIAL_RECOGNITION} needs a detection and a recognition model, as Immich "
                f"asks for them; got {', '.join(sorted(face)) or 'neither'}"
            )
        options = DetectionOptions.model_validate(face["detection"].options)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entries'}: {e['msg']}" for e in exc.errors()
        )
        raise EntriesError(f"entries is not Immich's request JSON ({where})") from exc
    return FaceRequest(face["recognition"].modelName, options.minScore), others


def clean_name(model_name: str) -> str:
    """The pack a model name means, as Immich's ``clean_name`` (config.py) reads it."""
    return model_name.split("/")[-1].translate(str.maketrans(":\\/", "___", "."))


def recognizer_refusal(model_name: str, files: frozenset[str]) -> str | None:
    """Why facescan cannot answer for ``model_name`` with the model files ``files``."""
    pack = clean_name(model_name)
    wanted = RECOGNIZERS.get(pack)
    if wanted is None:
        return (
            f"Immich asks for {model_name!r}, not an InsightFace pack facescan can serve "
            f"({', '.join(RECOGNIZERS)})"
        )
    if wanted not in files:
        return (
            f"Immich asks for {pack}, whose recognizer {wanted} is not in facescan's model "
            f"directory: other embeddings would not compare with those of {pack}"
        )
    return None


def immich_router(pool: DetectorPool, rejected: Callable[[], None], *, on: bool) -> APIRouter:
    """The two routes over ``pool`` (``rejected``: counts a request refused as busy);
    ``on`` False: no route."""
    router = APIRouter(tags=["immich"])
    if not on:
        return router
    directory = pool.config.model_dir or DEFAULT_INSIGHTFACE_DIR.expanduser()
    files = frozenset(path.name.lower() for path in Path(directory).glob("*.onnx"))

    @router.get(
        "/ping",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "pong"},
            503: {"model": ErrorBody, "description": "No worker is ready (unavailable)."},
        },
        summary="Immich's availability check",
    )
    async def ping() -> Response:
        """`pong` while a detector worker is ready: Immich tries ready servers first."""
        if pool.stats().ready == 0:
            return error_response(503, "unavailable", "no detector worker is ready")
        return PlainTextResponse("pong")

    @router.post(
        "/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Immich's facial recognition: faces with ArcFace embeddings",
    )
    async def predict(
        entries: Annotated[str, Form(description="Immich's request JSON.")],
        image: Annotated[UploadFile | None, File(description="The photo.")] = None,
        text: Annotated[str | None, Form(description="clip's text: not served.")] = None,
    ) -> PredictResponse | Response:
        """Faces of `image` scored at least the detection's minScore, each with the
        embedding of the recognition pack, in the shape Immich's ML server answers."""
        try:
            face, others = read_entries(entries)
        except EntriesError as exc:
            return error_response(422, "invalid_request", str(exc))
        if image is None and text is None:
            return error_response(400, "invalid_request", "Either image or text must be provided")
        if face is None or others:
            detail = (
                f"facescan serves Immich's {FACIAL_RECOGNITION} only, not "
                f"{', '.join(others)}: give Immich another machine-learning URL for it"
            )
            return error_response(501, "model_unavailable", detail)
        if image is None:
            return error_response(400, "invalid_request", f"{FACIAL_RECOGNITION} needs an image")
        refusal = recognizer_refusal(face.model_name, files)
        if refusal is not None:
            return error_response(501, "model_unavailable", refusal)
        data = await image.read()
        if not data:
            return error_response(400, "invalid_request", "the `image` file is empty")
        outcome, _ = await detect(pool, data, on_busy=rejected)  # refusals: Problem
        if outcome.embedding_model != "arcface":
            detail = (
                f"memory ran out at every InsightFace step, and {outcome.model}'s "
                f"{outcome.embedding_model} embeddings are not the 512-d vectors Immich stores"
            )
            return error_response(413, "image_too_large", detail)
        return _answer(outcome, face.min_score)

    return router


def _answer(outcome: Detected, min_score: float) -> PredictResponse:
    faces = [
        ImmichFace(
            boundingBox=BoundingBox(x1=f.left, y1=f.top, x2=f.right, y2=f.bottom),
            embedding=json.dumps(list(f.embedding), separators=(",", ":")),
            score=f.score,
        )
        for f in outcome.faces
        if f.score >= min_score
    ]
    return PredictResponse.model_validate(
        {FACIAL_RECOGNITION: faces, "imageHeight": outcome.height, "imageWidth": outcome.width}
    )
