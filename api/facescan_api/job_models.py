"""The bodies of POST /process, GET /process/{job_id} and the callback (pydantic).

Built by ``facescan_api.jobs`` from a job's row; the callback's body is a
:class:`JobResult`, and GET answers the same fields plus the delivery's state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facescan_api.models import Face, ImageSize, ModelName
from facescan_queue.models import MediaKind

JobState = Literal["queued", "processing", "done", "failed"]
JobErrorType = Literal[
    "download_failed",
    "oom",
    "timeout",
    "decode",
    "missing",
    "permission",
    "crash",
    "unavailable",
    "internal",
]
DeliveryState = Literal["pending", "acknowledged", "given_up"]
JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class ProcessRequest(BaseModel):
    """One job: the media by URL (fetched) or by path (copied), and where to call back."""

    model_config = ConfigDict(
        extra="forbid",
        # `_one_source` in the document: exactly one of them is a string
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("media_url", "path")
            ]
        },
    )

    job_id: str = Field(
        pattern=JOB_ID_PATTERN,
        description="The client's id, unique per API library: the same job_id with the "
        "same content answers the existing job, with other content 409 job_conflict.",
    )
    media_id: str = Field(min_length=1, max_length=512, description="The client's media id.")
    media_url: str | None = Field(
        default=None, max_length=4096, description="http(s) URL on an allowed host."
    )
    path: str | None = Field(
        default=None, max_length=4096, description="Absolute path beneath a --path-root."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=4096,
        description="http(s) URL the settled result is POSTed to, signed, until a 2xx.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.media_url is None) == (self.path is None):
            raise ValueError("give exactly one of media_url and path")
        return self


class JobError(BaseModel):
    type: JobErrorType = Field(
        description="download_failed (the media could not be fetched), or the queue's "
        "failure type of the image's last attempt."
    )
    detail: str


class JobFace(Face):
    """A face of a job's media: a photo's, or one of a video's sampled frames."""

    frame_ms: int | None = Field(
        default=None,
        description="A video's face: the timestamp of its frame (ms from the start); "
        "null for a photo's.",
    )
    track: int | None = Field(
        default=None,
        description="A video's face: faces of one video with the same track are one "
        "person across its frames; null for a photo's.",
    )


class JobResult(BaseModel):
    """A job, as the callback receives it once settled (done or failed)."""

    job_id: str
    media_id: str
    state: JobState = Field(
        description="queued and processing until settled: done (faces found, maybe none) "
        "or failed (error says why)."
    )
    faces: list[JobFace] | None = Field(
        description="Set once done; a video's: the faces of its sampled frames."
    )
    kind: MediaKind | None = Field(
        default=None,
        description="What the media is, by its content: image (a photo) or video (its "
        'frames sampled, README "Videos"); null when it could not be fetched.',
    )
    duration_ms: int | None = Field(
        default=None, description="A video's duration from its header, when it says."
    )
    image: ImageSize | None = None
    model: ModelName | None = None
    scale: float | None = None
    degraded: bool | None = None
    error: JobError | None = None
    attempts: int = Field(description="Detection attempts charged to the image.")
    created_at: datetime
    settled_at: datetime | None = None


class CallbackState(BaseModel):
    url: str
    state: DeliveryState = Field(
        description="pending (owed: the job is not settled yet, or a delivery is due at "
        "next_attempt_at), acknowledged (a delivery got a 2xx; never sent again) or "
        "given_up (too many attempts, too long after the job settled, or a target the "
        "callback rules refuse: last_error says which; never sent again)."
    )
    attempts: int = Field(description="Deliveries tried.")
    acknowledged_at: datetime | None = Field(description="When a delivery got a 2xx (once).")
    next_attempt_at: datetime | None = Field(description="When the next delivery is due.")
    last_error: str | None


class JobStatus(JobResult):
    """GET /process/{job_id}: the callback's body plus the delivery's state."""

    callback: CallbackState | None = None
