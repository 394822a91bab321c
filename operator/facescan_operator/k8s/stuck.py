"""Detector Jobs whose pods cannot be created or cannot run: found, handed back, held.

Called by reconcile.reconcile on every tick, after it has read the Jobs and their pods and
before it plans new batches: ``refusals`` reads the FailedCreate Events of Jobs that have
no pod, ``find`` (pure) says which Jobs are stuck, ``hand_back`` ends a stuck Job's lease;
holds.py (pure) holds launching back after them and gives the Degraded condition.
Holds live in the FaceScan's ``status.holds``.

What counts as stuck, as the API server reports it, and when it is acted on (a Job's age
counts from its creationTimestamp):

- ``FailedCreate``: a Warning Event of the Job controller on the Job (Pod Security,
  exceeded quota, a missing ServiceAccount), no pod: at once.
- ``CreateContainerConfigError`` (a missing Secret or key), ``InvalidImageName`` and
  ``ImagePullBackOff``, from the container's waiting state: at once. ``ErrImagePull``
  (one failed pull; ImagePullBackOff follows) and ``CreateContainerError`` (may be
  transient): after ``GRACE`` (60 s).
- ``Unschedulable`` (pod condition PodScheduled=False): after ``GRACE``, which leaves
  room for a cluster autoscaler, and only while no other Job of this FaceScan holds a
  node of the same pool; while one does, the pod is queueing behind our own pods and
  will be scheduled when they end.
- ``DetectorCannotStart``: its detector ran and exited 2, saying it cannot start (its
  settings, model files missing from the image), before starting any image: at once,
  with its last log line (terminated.message). Its hold ends only when a later Job of
  the pool ends otherwise, not as soon as one runs.

A stuck Job is handled once, in the tick that finds it (the lease it holds tells that it
was not handled yet): its images go back to the queue uncharged (nothing ran), the Job is
deleted, one Warning Event ``PodsCannotStart`` is emitted, and a hold stops new Jobs in its
scope: every pool for FailedCreate and CreateContainerConfigError (the namespace or the
pod template is at fault), the Job's pool otherwise. No Job starts in a held scope until
the hold's retry time (``RETRY_BACKOFF`` after the refusal, doubled at each further
refusal up to ``RETRY_BACKOFF_CAP``); then one Job at a time tries again. A hold ends
when a Job of its scope starts running after the refusal (Normal Event
``PodsStartAgain``), or when nothing is left to run.

``Unschedulable`` for ``Insufficient memory`` is different: a new Job at the next cascade
step avoids it. No node has room for what this step needs, so the batch's images move to
the next step (smaller scale, less memory) as an OOM moves its culprit: no attempt
charged, an ``oom`` failure recorded with the scheduler's message. Warning Event
``BatchTooLargeForNodes``; nothing is held (the next Job asks for less, in this tick);
Degraded reports it until a Job of the pool runs. At the last step nothing is smaller:
it is held like the other causes. The scheduler says the same when other workloads fill
the nodes; to keep full-size work waiting instead, cap Jobs with ``maxMemoryMiB``.

Degraded carries the most important cause: one that stops every pool first, then the
circuit breaker (BreakerOpen), then one pool's, then a batch moved down the cascade.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from facescan_operator.k8s.holds import ALL_POOLS, DETECTOR_CANNOT_START, Stuck
from facescan_operator.k8s.observe import (
    FAILED_CREATE,
    UNSCHEDULABLE,
    JobView,
    PodTrouble,
    creation_refusal,
)
from facescan_operator.settlement import last_words
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

GRACE = timedelta(seconds=60)
"""How old a Job is before a cause that may resolve by itself is acted on."""
ACT_AT_ONCE = frozenset(
    {FAILED_CREATE, "CreateContainerConfigError", "InvalidImageName", "ImagePullBackOff"}
)
AFTER_GRACE = frozenset({UNSCHEDULABLE, "ErrImagePull", "CreateContainerError"})
WHOLE_SCAN = frozenset({FAILED_CREATE, "CreateContainerConfigError"})
"""Causes of the namespace or the pod template: they hold back every pool."""
INSUFFICIENT_MEMORY = "Insufficient memory"


class EventsApi(Protocol):
    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]: ...


async def refusals(
    kube: EventsApi, namespace: str, jobs: Sequence[JobView]
) -> dict[str, PodTrouble]:
    """Why each unfinished Job without a pod has none (its FailedCreate Event), if known:
    one Events list per such Job, usually none."""
    podless = [j.name for j in jobs if not (j.finished or j.suspended or j.deleting or j.pods)]
    lists = await asyncio.gather(
        *(
            kube.list_events(namespace, f"involvedObject.kind=Job,involvedObject.name={name}")
            for name in podless
        )
    )
    found = {
        name: creation_refusal(events, name) for name, events in zip(podless, lists, strict=True)
    }
    return {name: trouble for name, trouble in found.items() if trouble is not None}


def find(
    jobs: Sequence[JobView],
    refused: Mapping[str, PodTrouble],
    now: datetime,
    cascade_steps: int,
) -> list[Stuck]:
    """Pure: the unfinished Jobs whose pods cannot be created or run, past their grace."""
    holding = {j.pool for j in jobs if j.scheduled and not j.finished}
    stuck = []
    for job in jobs:
        if job.cannot_start and not job.deleting:
            why = last_words(job.message) or job.detail
            stuck.append(Stuck(job.name, job.pool, DETECTOR_CANNOT_START, why, job.pool))
            continue
        if job.finished or job.suspended or job.deleting:
            continue
        trouble = job.trouble if job.pods else refused.get(job.name)
        if trouble is None or trouble.reason not in ACT_AT_ONCE | AFTER_GRACE:
            continue
        young = job.created_at is not None and now - job.created_at < GRACE
        if trouble.reason in AFTER_GRACE and young:
            continue
        if trouble.reason == UNSCHEDULABLE and job.pool in holding:
            continue  # queueing behind our own pods on that pool
        move_down = (
            trouble.reason == UNSCHEDULABLE
            and INSUFFICIENT_MEMORY in trouble.message
            and job.step + 1 < cascade_steps
        )
        scope = ALL_POOLS if trouble.reason in WHOLE_SCAN else job.pool
        stuck.append(Stuck(job.name, job.pool, trouble.reason, trouble.message, scope, move_down))
    return stuck


async def hand_back(
    queue: Queue, library: str, stuck: Stuck, job: JobView, *, leased: bool, lease_seconds: int
) -> int:
    """Ends a stuck Job's lease, if its detector ever claimed one, uncharged (nothing
    ran); or moves its batch one cascade step down (each image started and failed as oom,
    which charges no attempt before the last step), claiming the batch for it first if it
    never started. How many images went back or down."""
    moved = 0
    if stuck.move_down:
        if not leased:  # its detector never ran: its batch, as the detector would claim it
            await queue.claim(
                library,
                stuck.job,
                step=job.step,
                size_class=job.size_class,
                limit=max(1, job.images),
                lease_seconds=lease_seconds,
            )
        error = f"no node has room for the memory this step needs: {stuck.message}"
        while (image := await queue.start_next(stuck.job)) is not None:
            await queue.fail(image.image_id, stuck.job, ErrorType.OOM, error)
            moved += 1
    return moved + (await queue.release(stuck.job)).released
