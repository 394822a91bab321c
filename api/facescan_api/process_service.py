"""Starts what the database's routes need and stops it: the queue's connection
(``connected``: /people, /cluster and /process), and /process's API library, the
dispatcher of its detectors and the callback deliverer (``process_service``).

Entered by ``facescan_api.run`` around uvicorn. Everything /process knows lives in the
database and the media directory, so a server started again (after a crash, a SIGKILL)
carries on where the last one stopped: queued images are detected, owed callbacks sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.registry import Collector
from pydantic import SecretStr

from facescan_api.callback_targets import CallbackRules
from facescan_api.callbacks import Deliverer, DeliveryMetrics, DeliveryPolicy
from facescan_api.dispatch import Dispatcher, WorkerSpec
from facescan_api.jobs import Jobs
from facescan_api.media import MediaRules
from facescan_api.settings import ServeSettings
from facescan_api.trust import TrustError, tls_context
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
    collectors: tuple[Collector, ...]
    """Its metrics (callback deliveries), for the app's /metrics."""


@contextlib.asynccontextmanager
async def connected(dsn: str | None, *, required: bool) -> AsyncIterator[Queue | None]:
    """The queue on ``dsn``, closed at the end; None without a database. ``required``
    (/process is configured): an outage is waited out for DATABASE_PATIENCE_S, then
    CannotStart; otherwise one try, and a database that does not answer leaves /people
    and /cluster off (said on stderr; readiness reports the database)."""
    if dsn is None:
        yield None
        return

    def connect() -> Awaitable[Queue]:
        return Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), max_size=8)

    queue: Queue | None = None
    try:
        if required:
            queue = await wait_out(
                connect,
                patience_s=DATABASE_PATIENCE_S,
                on_wait=lambda delay, exc: log.warning(
                    "database unavailable, retrying in %.0f s: %s", delay, exc
                ),
            )
        else:
            queue = await connect()
    except (OSError, QueueError) as exc:
        if required:
            raise CannotStart(str(exc)) from exc
        print(
            f"facescan serve: the database does not answer ({exc}): /people and /cluster "
            "are off until the server is started again",
            file=sys.stderr,
            flush=True,
        )
    try:
        yield queue
    finally:
        if queue is not None:
            await queue.close()


@contextlib.asynccontextmanager
async def process_service(
    settings: ServeSettings, queue: Queue | None, dsn: str | None, *, threads: int
) -> AsyncIterator[ProcessService | None]:
    """The running service over ``queue``; None when /process is off (no database or no
    media dir)."""
    if queue is None or dsn is None or settings.media_dir is None:
        yield None
        return
    media_dir = Path(os.path.abspath(settings.media_dir))
    try:
        media_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
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
        try:
            tls = tls_context(settings.ca_file)
        except TrustError as exc:
            raise CannotStart(str(exc)) from exc
        rules = MediaRules(
            hosts=frozenset(settings.allow_hosts),
            roots=tuple(Path(os.path.abspath(r)) for r in settings.path_roots),
            max_bytes=settings.max_media_bytes(),
            timeout_s=settings.fetch_timeout_s,
            tls=tls,
        )
        secret = settings.secret()
        callback_rules = CallbackRules(frozenset(settings.callback_hosts))
        jobs = Jobs(
            ApiJobs(queue, settings.api_library),
            media_dir,
            rules,
            callbacks=callback_rules,
            secret=secret,
        )
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
        metrics = DeliveryMetrics()
        dispatcher = Dispatcher(
            queue, spec, workers=settings.process_workers, poll_s=settings.poll_s
        )
        tasks.append(asyncio.create_task(dispatcher.run()))
        if secret is not None:
            policy = DeliveryPolicy(
                timeout_s=settings.callback_timeout_s,
                backoff_s=settings.callback_backoff_s,
                backoff_cap_s=settings.callback_backoff_cap_s,
                max_attempts=settings.callback_max_attempts,
                give_up_after_s=settings.callback_give_up_after_h * 3600,
                poll_s=settings.poll_s,
            )
            deliverer = Deliverer(jobs, secret, callback_rules, policy, metrics, tls)
            tasks.append(asyncio.create_task(deliverer.run()))
        yield ProcessService(jobs, dispatcher.kick, metrics.collectors)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
