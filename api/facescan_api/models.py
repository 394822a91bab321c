"""The API's request and response bodies (pydantic), as the OpenAPI document shows them.

Built by the routes in ``facescan_api.app`` from the workers' plain results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ModelName = Literal["hog", "cnn", "insightface"]
EmbeddingModel = Literal["dlib", "arcface"]
ErrorType = Literal[
    "invalid_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "upload_too_large",
    "image_too_large",
    "unsupported_image",
    "undecodable_image",
    "image_timeout",
    "busy",
    "worker_lost",
    "unavailable",
    "model_unavailable",
    "internal",
    "url_not_allowed",
    "path_not_allowed",
    "media_not_found",
    "media_too_large",
    "redirect_refused",
    "job_conflict",
    "callback_not_configured",
    # /people and /cluster (facescan_api.people_errors maps the people's errors to them)
    "invalid_cursor",
    "invalid_name",
    "duplicate_person",
    "ambiguous_person",
    "no_face",
    "face_choice_needed",
    "face_taken",
    "photo_clash",
    "same_person",
    "mixed_libraries",
    "nothing_to_undo",
    "not_detected",
    "too_many_faces",
]


class ErrorBody(BaseModel):
    """Every error answer: a type to branch on, the status again, and a message."""

    error: ErrorType = Field(description="What went wrong, one of a closed set.")
    status: int = Field(description="The HTTP status of the answer.")
    detail: str = Field(description="A message for people; the upload is named `upload`.")


class Box(BaseModel):
    """In original pixels, as a person sees the image (after its EXIF orientation)."""

    top: int
    right: int
    bottom: int
    left: int


class Embedding(BaseModel):
    model: EmbeddingModel = Field(
        description="dlib: dlib's 128-d ResNet (hog, cnn); arcface: InsightFace's 512-d."
    )
    vector: list[float]


class Face(BaseModel):
    box: Box
    score: float = Field(description="The detector's confidence (dlib's HOG/MMOD score).")
    landmarks: list[tuple[float, float]] = Field(
        description="Five (x, y) points in original pixels: dlib's 5-point shape (eye "
        "corners, base of the nose) or SCRFD's (eyes, nose tip, mouth corners)."
    )
    embedding: Embedding


class ImageSize(BaseModel):
    width: int = Field(description="Original width as a person sees the image.")
    height: int


class DetectResponse(BaseModel):
    faces: list[Face]
    image: ImageSize
    model: ModelName = Field(description="The model that found them.")
    scale: float = Field(description="Cascade scale of the detection (after max dimension).")
    degraded: bool = Field(
        description="Found at a smaller scale or by hog because memory ran out first."
    )
    processing_ms: int = Field(description="Milliseconds from the upload read to the answer.")


class Liveness(BaseModel):
    status: Literal["ok"]


class DatabaseHealth(BaseModel):
    configured: bool
    reachable: bool | None = Field(description="null when no database is configured.")
    target: str | None = Field(description="host:port/database, never the password.")


class PoolHealth(BaseModel):
    workers: int
    ready: int
    busy: int
    waiting: int
    capacity: int = Field(description="Workers plus the requests that may wait for one.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    live: bool
    ready: bool = Field(description="Every worker has its model and the database answers.")
    version: str
    model: str
    models_loaded: list[str]
    gpu_available: bool
    pool: PoolHealth
    database: DatabaseHealth
