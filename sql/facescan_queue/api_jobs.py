"""The API's jobs (POST /process of ``facescan serve``) in the queue's database.

Called by ``facescan_api.jobs`` (submitting and reading jobs) and
``facescan_api.callbacks`` (owed deliveries). A job's media becomes an image of the API
library, registered in the same transaction as the job, so the job exists exactly when
its image is queued; the image's state is the job's. A callback's delivery is pending
(next_delivery_at finite), acknowledged (acknowledged_at) or given up (next_delivery_at
'infinity', last_delivery_error saying why), without a column of its own. Every query
is named in queries.sql (``api_job*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from facescan_queue import errors
from facescan_queue.models import NewImage
from facescan_queue.queries import query
from facescan_queue.repository import Queue


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a client submitted: the media (a URL or a path, one of them) and callback."""

    job_id: str
    media_id: str
    media_url: str | None
    media_path: str | None
    callback_url: str | None

    def same_as(self, row: asyncpg.Record) -> bool:
        """Whether a stored job was submitted with this content."""
        return (row["media_id"], row["media_url"], row["media_path"], row["callback_url"]) == (
            self.media_id,
            self.media_url,
            self.media_path,
            self.callback_url,
        )


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A settled job whose callback is owed now; ``attempt`` counts this one."""

    job_id: str
    callback_url: str
    attempt: int


class ApiJobs:
    """The jobs of one API library, over a connected queue's pool."""

    def __init__(self, queue: Queue, library: str) -> None:
        self.queue = queue
        self.library = library

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with errors.translated(target=self.queue.target, user=self.queue.user):
            return await self.queue.pool.fetch(query(name), self.library, *args)

    async def get(self, job_id: str) -> asyncpg.Record | None:
        """The job with its image's state, detection and failure; None if unknown."""
        rows = await self._fetch("api_job", job_id)
        return rows[0] if rows else None

    async def faces(self, image_id: int) -> list[asyncpg.Record]:
        """The committed faces of a job's image, embeddings as arrays."""
        with errors.translated(target=self.queue.target, user=self.queue.user):
            return await self.queue.pool.fetch(query("api_job_faces"), image_id)

    async def submit(
        self, job: NewJob, image: NewImage | None, error: tuple[str, str] | None = None
    ) -> bool:
        """Records the job and registers its ``image`` (a path in the library) in one
        transaction, or records it settled with ``error`` (type, message) and no image.
        False, changing nothing, when the library already has a job with this job_id."""
        error_type, message = error if error is not None else (None, None)
        with errors.translated(target=self.queue.target, user=self.queue.user):
            async with self.queue.pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    query("api_job_insert"),
                    self.library,
                    job.job_id,
                    job.media_id,
                    job.media_url,
                    job.media_path,
                    job.callback_url,
                    error_type,
                    message,
                )
                if inserted is None:
                    return False
                if image is not None:
                    await conn.fetchrow(
                        query("register_images"),
                        self.library,
                        [image.path],
                        [image.width],
                        [image.height],
                        [image.file_bytes],
                        0,
                        [image.mtime],
                        [image.kind],
                        [image.duration_ms],
                    )
                    await conn.execute(
                        query("api_job_attach"), self.library, job.job_id, image.path
                    )
        return True

    async def take_due(self, *, hold_s: float, limit: int) -> Sequence[DueDelivery]:
        """Settled jobs whose callback is due, each held for ``hold_s`` seconds."""
        rows = await self._fetch("api_jobs_due", hold_s, limit)
        return [DueDelivery(r["job_id"], r["callback_url"], r["delivery_attempts"]) for r in rows]

    async def acknowledged(self, job_id: str) -> bool:
        """Records the acknowledged delivery; False when one was recorded already."""
        return bool(await self._fetch("api_job_acknowledged", job_id))

    async def not_acknowledged(self, job_id: str, retry_in_s: float, error: str) -> None:
        """Records a delivery that failed; the next is due in ``retry_in_s`` seconds."""
        await self._fetch("api_job_delivery_failed", job_id, retry_in_s, error)

    async def given_up(self, job_id: str, error: str) -> None:
        """Records that no delivery will be tried again (``error`` says why): the job's
        callback is never due again (next_delivery_at 'infinity')."""
        await self._fetch("api_job_delivery_given_up", job_id, error)


def settled_at(row: asyncpg.Record) -> datetime | None:
    """When a job settled (its detection, its image's death, a failed fetch), or None."""
    state = row["image_state"]
    if row["image_id"] is None:
        return row["created_at"]  # type: ignore[no-any-return]
    if state == "done":
        return row["detected_at"]  # type: ignore[no-any-return]
    if state == "dead":
        return row["last_failure_at"] or row["updated_at"]  # type: ignore[no-any-return]
    return None
