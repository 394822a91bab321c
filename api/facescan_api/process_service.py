"""Starts what /process needs and stops it: the queue's connection, the API library, the
dispatcher of its detectors and the callback deliverer.

Entered by ``facescan_api.run`` around uvicorn. Everything /process knows lives in the
database and the media directory, so a server started again (after a crash, a SIGKILL)
carries on where the last one stopped: queued images are detected, owed callbacks sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from facescan_api.callbacks import Deliverer
from facescan_api.dispatch import Dispatcher, WorkerSpec
from facescan_api.jobs import Jobs
from facescan_api.media import MediaRules
from facescan_api.settings import ServeSettings
from facescan_queue.api_jobs import ApiJobs
from facescan_queue.defaults import CASCADES
from facescan_queue.errors import QueueError
from facescan_queue.models import LibraryPolicy
from facescan_queue.outage import wait_out
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings

log = logging.getLogger("facescan.api.process")

DATABASE_PATIENCE_S = 60.0
"""How long a server starting with /process waits for its database."""


class CannotStart(Exception):
    """/process is configured but cannot start (the database, its schema, the media dir)."""


@dataclass(frozen=True)
class ProcessService:
    jobs: Jobs
    kick: Callable[[], None]


@contextlib.asynccontextmanager
async def process_service(
    settings: ServeSettings, dsn: str | None, *, threads: int
) -> AsyncIterator[ProcessService | None]:
    """The running service; None when /process is off (no database or no media dir)."""
    if dsn is None or settings.media_dir is None:
        yield None
        return
    media_dir = Path(os.path.abspath(settings.media_dir))
    try:
        media_dir.mkdir(parents=True, exist_ok=True)
        queue = await wait_out(
            lambda: Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), max_size=8),
            patience_s=DATABASE_PATIENCE_S,
            on_wait=lambda delay, exc: log.warning(
                "database unavailable, retrying in %.0f s: %s", delay, exc
            ),
        )
    except (OSError, QueueError) as exc:
        raise CannotStart(str(exc)) from exc
    tasks: list[asyncio.Task[None]] = []
    try:
        cascade = CASCADES[settings.model]
        try:
            await queue.ensure_library(
                settings.api_library,
                LibraryPolicy(
                    cascade_models=tuple(m for m, _ in cascade),
                    cascade_scales=tuple(s for _, s in cascade),
                    max_dimension=settings.max_dimension,
                ),
            )
        except QueueError as exc:
            raise CannotStart(str(exc)) from exc
        rules = MediaRules(
            hosts=frozenset(settings.allow_hosts),
            roots=tuple(Path(os.path.abspath(r)) for r in settings.path_roots),
            max_bytes=settings.max_media_bytes(),
            timeout_s=settings.fetch_timeout_s,
        )
        secret = settings.secret()
        jobs = Jobs(ApiJobs(queue, settings.api_library), media_dir, rules, secret=secret)
        spec = WorkerSpec(
            library=settings.api_library,
            root=media_dir,
            dsn=dsn,
            cascade=cascade,
            threads=threads,
            upsample=settings.hog_upsample,
            image_timeout_s=settings.image_timeout_s,
            model_dir=settings.model_dir,
        )
        dispatcher = Dispatcher(
            queue, spec, workers=settings.process_workers, poll_s=settings.poll_s
        )
        tasks.append(asyncio.create_task(dispatcher.run()))
        if secret is not None:
            deliverer = Deliverer(
                jobs,
                secret,
                timeout_s=settings.callback_timeout_s,
                backoff_s=settings.callback_backoff_s,
                backoff_cap_s=settings.callback_backoff_cap_s,
                poll_s=settings.poll_s,
            )
            tasks.append(asyncio.create_task(deliverer.run()))
        yield ProcessService(jobs, dispatcher.kick)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await queue.close()
