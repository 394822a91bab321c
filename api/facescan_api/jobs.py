"""POST /process and GET /process/{job_id}: a job in, through the queue, and its result.

Called by the routes (``facescan_api.process``) and by the deliverer
(``facescan_api.callbacks``), which sends :meth:`Jobs.status` without its ``callback``
field. Submitting fetches or copies the media into the API library's root (under a
name no other submission uses, flushed to disk), then records the job and registers
its image in one transaction: a job either exists with its image queued, or not at
all (the client's retry with the same job_id makes it). A download that fails records
the job settled as failed, with no image.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from PIL import Image

from facescan_api.callback_targets import CallbackRules, check_callback_url
from facescan_api.job_models import (
    CallbackState,
    DeliveryState,
    JobError,
    JobErrorType,
    JobFace,
    JobState,
    JobStatus,
    ProcessRequest,
)
from facescan_api.media import DownloadFailed, MediaRefused, MediaRules, copy, fetch
from facescan_api.media_kind import kind_of_file, video_facts
from facescan_api.models import Box, Embedding, ImageSize
from facescan_queue.api_jobs import ApiJobs, NewJob, settled_at
from facescan_queue.models import NewImage

_STATES: dict[str, JobState] = {
    "pending": "queued",
    "leased": "processing",
    "done": "done",
    "dead": "failed",
}


class JobConflict(Exception):
    """The job_id is taken by a job with other content."""


class Jobs:
    """The API library's jobs: submitting them and reading their results."""

    def __init__(
        self,
        store: ApiJobs,
        media_dir: Path,
        rules: MediaRules,
        *,
        callbacks: CallbackRules,
        secret: bytes | None,
    ) -> None:
        self.store = store
        self.media_dir = media_dir
        self.rules = rules
        self.callbacks = callbacks
        self.has_secret = secret is not None

    async def submit(self, request: ProcessRequest) -> JobStatus:
        """The job (made now, or the identical one made before); raises MediaRefused or
        JobConflict for what the request breaks."""
        job = NewJob(
            request.job_id, request.media_id, request.media_url, request.path, request.callback_url
        )
        existing = await self.status(job.job_id, require=job)
        if existing is not None:
            return existing
        if job.callback_url is not None:
            if not self.has_secret:
                raise MediaRefused(
                    422,
                    "callback_not_configured",
                    "callback_url needs FACESCAN_CALLBACK_SECRET on the server, to sign with",
                )
            check_callback_url(job.callback_url, self.callbacks)
        name = _media_name(self.store.library, job.job_id)
        part = self.media_dir / f".{name}.part"
        try:
            image, error = await self._bring(job, part, name), None
        except DownloadFailed as exc:
            image, error = None, ("download_failed", str(exc))
        finally:
            part.unlink(missing_ok=True)
        made_now = await self.store.submit(job, image, error)
        if not made_now and image is not None:  # a concurrent submission made it first
            (self.media_dir / image.path).unlink(missing_ok=True)
        made = await self.status(job.job_id, require=job)
        assert made is not None
        return made

    async def _bring(self, job: NewJob, part: Path, name: str) -> NewImage:
        with part.open("wb") as out:
            if job.media_url is not None:
                size = await fetch(job.media_url, self.rules, out)
            else:
                assert job.media_path is not None
                size = await asyncio.to_thread(copy, job.media_path, self.rules, out)
            out.flush()
            os.fsync(out.fileno())
        kind = await asyncio.to_thread(kind_of_file, part)
        duration_ms = None
        if kind == "video":
            width, height, duration_ms = await asyncio.to_thread(video_facts, part)
        else:
            width, height = await asyncio.to_thread(_header_size, part)
        final = self.media_dir / name
        os.replace(part, final)
        _fsync_dir(self.media_dir)
        mtime = datetime.fromtimestamp(final.stat().st_mtime, UTC)
        return NewImage(name, width, height, size, mtime, kind, duration_ms)

    async def status(self, job_id: str, *, require: NewJob | None = None) -> JobStatus | None:
        """The job now; None if unknown. With ``require``, JobConflict unless the stored
        job was submitted with that content."""
        row = await self.store.get(job_id)
        if row is None:
            return None
        if require is not None and not require.same_as(row):
            raise JobConflict(f"job_id {job_id!r} was submitted before with other content")
        return await self._status(row)

    async def _status(self, row: asyncpg.Record) -> JobStatus:
        state: JobState = "failed"
        error = faces = image = None
        if row["image_id"] is None:
            kind: JobErrorType = "download_failed" if row["fetch_error_type"] else "missing"
            error = JobError(type=kind, detail=row["fetch_error"] or "the job's image is gone")
        else:
            state = _STATES[row["image_state"]]
        if state == "done":
            faces = [_face(f) for f in await self.store.faces(row["image_id"])]
            if row["original_width"] and row["original_height"]:
                image = ImageSize(width=row["original_width"], height=row["original_height"])
        elif row["image_state"] == "dead":
            error = JobError(type=row["failure_type"] or "internal", detail=row["last_error"] or "")
        callback = None
        if row["callback_url"] is not None:
            acknowledged = row["acknowledged_at"]
            delivery: DeliveryState = "pending"
            if acknowledged is not None:
                delivery = "acknowledged"
            elif row["delivery_given_up"]:
                delivery = "given_up"
            callback = CallbackState(
                url=row["callback_url"],
                state=delivery,
                attempts=row["delivery_attempts"],
                acknowledged_at=acknowledged,
                next_attempt_at=row["next_delivery_at"] if delivery == "pending" else None,
                last_error=row["last_delivery_error"],
            )
        settled = state in ("done", "failed")
        return JobStatus(
            job_id=row["job_id"],
            media_id=row["media_id"],
            state=state,
            faces=faces,
            kind=row["kind"],
            duration_ms=row["duration_ms"],
            image=image,
            model=row["model"] if state == "done" else None,
            scale=row["scale"] if state == "done" else None,
            degraded=row["degraded"] if state == "done" else None,
            error=error,
            attempts=row["attempts"] or 0,
            created_at=row["created_at"],
            settled_at=settled_at(row) if settled else None,
            callback=callback,
        )


def _face(row: asyncpg.Record) -> JobFace:
    flat = list(row["landmarks"] or ())
    return JobFace(
        box=Box(
            top=row["box_top"],
            right=row["box_right"],
            bottom=row["box_bottom"],
            left=row["box_left"],
        ),
        score=float(row["score"] or 0.0),
        landmarks=[(float(x), float(y)) for x, y in zip(flat[::2], flat[1::2], strict=True)],
        embedding=Embedding(
            model="arcface" if row["arcface"] else "dlib",
            vector=[float(v) for v in row["embedding"] or ()],
        ),
        frame_ms=row["frame_ms"],
        track=row["track"],
    )


def _media_name(library: str, job_id: str) -> str:
    """A file name of the job's own (the job_id hashed: no client text in paths) that
    no other submission uses (a random suffix: racing submissions never share a file)."""
    digest = hashlib.sha256(f"{library}\0{job_id}".encode()).hexdigest()[:32]
    return f"{digest}-{uuid.uuid4().hex[:8]}"


def _header_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from the file's header (no decode); None when unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None, None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
