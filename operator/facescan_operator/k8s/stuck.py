"""Detector Jobs whose pods cannot be created or cannot run: found, handed back, held.

Called by reconcile.reconcile on every tick, after it has read the Jobs and their pods and
before it plans new batches: ``refusals`` reads the FailedCreate Events of Jobs that have
no pod, ``find`` (pure) says which Jobs are stuck, ``hand_back`` ends a stuck Job's lease,
``update_holds`` (pure) says where launching is held back and which Events to emit,
``gate`` (pure) drops the planned batches a hold keeps back, and ``degraded`` (pure) gives
the FaceScan's Degraded condition. Holds live in the FaceScan's ``status.holds``.

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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from facescan_operator.k8s.observe import (
    FAILED_CREATE,
    UNSCHEDULABLE,
    JobView,
    PodTrouble,
    creation_refusal,
    stamp,
)
from facescan_operator.planner import BatchPlan
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
RETRY_BACKOFF = timedelta(seconds=60)
RETRY_BACKOFF_CAP = timedelta(seconds=300)
ALL_POOLS = "*"
INSUFFICIENT_MEMORY = "Insufficient memory"
EVENT_STUCK = "PodsCannotStart"
EVENT_MOVED_DOWN = "BatchTooLargeForNodes"
EVENT_RECOVERED = "PodsStartAgain"
BREAKER_OPEN = "BreakerOpen"


@dataclass(frozen=True)
class Stuck:
    """A Job whose pods cannot be created or run, and what to do with its batch."""

    job: str
    pool: str
    reason: str
    message: str
    scope: str
    """The pool whose launches it holds back, or ALL_POOLS."""
    move_down: bool = False
    """Its images go to the next cascade step (no node has the memory this one needs)."""


@dataclass(frozen=True)
class Hold:
    """Where launching is held back (or, not blocking, a batch moved down) and why."""

    pool: str
    reason: str
    message: str
    job: str
    at: datetime
    """The latest refusal: a Job of the scope that starts later ends the hold."""
    retry_at: datetime
    retries: int = 0
    blocking: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "reason": self.reason,
            "message": self.message,
            "job": self.job,
            "at": stamp(self.at),
            "retryAt": stamp(self.retry_at),
            "retries": self.retries,
            "blocking": self.blocking,
        }

    def describe(self) -> str:
        where = "" if self.pool == ALL_POOLS else f", pool {self.pool}"
        if not self.blocking:
            return f"{self.message} (Job {self.job}{where}: its images moved down the cascade)"
        return f"{self.message} (Job {self.job}{where}; next try from {stamp(self.retry_at)})"


def holds_of(status: Mapping[str, Any]) -> list[Hold]:
    """The holds kept in a FaceScan's status (entries that do not parse are dropped)."""
    holds = []
    for entry in status.get("holds") or ():
        try:
            holds.append(
                Hold(
                    str(entry["pool"]),
                    str(entry["reason"]),
                    str(entry["message"]),
                    str(entry["job"]),
                    datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00")),
                    datetime.fromisoformat(str(entry["retryAt"]).replace("Z", "+00:00")),
                    int(entry.get("retries", 0)),
                    bool(entry.get("blocking", True)),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return holds


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


def _backoff(retries: int) -> timedelta:
    return min(RETRY_BACKOFF * (1 << min(retries, 16)), RETRY_BACKOFF_CAP)


def update_holds(
    holds: Sequence[Hold],
    jobs: Sequence[JobView],
    stuck: Sequence[Stuck],
    returned: Mapping[str, int],
    pools: Collection[str],
    now: datetime,
) -> tuple[list[Hold], list[tuple[str, str, str]]]:
    """Pure: the holds after this tick and the Events to emit. ``returned`` maps each stuck
    Job handled in this tick to the images it handed back (none if it never started)."""
    events: list[tuple[str, str, str]] = []
    kept: dict[str, Hold] = {}
    for hold in holds:
        if hold.pool != ALL_POOLS and hold.pool not in pools:
            continue  # the pool left the spec
        ran = next(
            (
                j
                for j in jobs
                if hold.pool in (ALL_POOLS, j.pool)
                and j.started_at is not None
                and j.started_at >= hold.at
            ),
            None,
        )
        if ran is None:
            kept[hold.pool] = hold
        elif hold.blocking:
            events.append(
                (
                    "Normal",
                    EVENT_RECOVERED,
                    f"Job {ran.name} runs on pool {ran.pool}: {hold.reason} is over",
                )
            )
    earlier = dict(kept)  # several Jobs refused in one tick back off once
    for s in stuck:
        if s.job not in returned:
            continue  # handled in an earlier tick
        before = earlier.get(s.scope)
        if s.move_down:
            if s.scope not in kept or not kept[s.scope].blocking:
                kept[s.scope] = Hold(s.scope, s.reason, s.message, s.job, now, now, 0, False)
            events.append(
                (
                    "Warning",
                    EVENT_MOVED_DOWN,
                    f"Job {s.job}: {s.reason}: {s.message}; deleted, its "
                    f"{returned[s.job]} images move to the next cascade step",
                )
            )
            continue
        retries = before.retries + 1 if before is not None and before.blocking else 0
        hold = Hold(s.scope, s.reason, s.message, s.job, now, now + _backoff(retries), retries)
        kept[s.scope] = hold
        where = "in this FaceScan" if s.scope == ALL_POOLS else f"on pool {s.scope}"
        images = (
            f"{returned[s.job]} images back in the queue uncharged"
            if returned[s.job]
            else "nothing ran, its images stay in the queue uncharged"
        )
        events.append(
            (
                "Warning",
                EVENT_STUCK,
                f"Job {s.job}: {s.reason}: {s.message}; deleted, {images}; no new Jobs "
                f"{where} until {stamp(hold.retry_at)}",
            )
        )
    return list(kept.values()), events


def gate(
    chosen: Sequence[tuple[BatchPlan, str]],
    holds: Sequence[Hold],
    active: Sequence[JobView],
    now: datetime,
) -> list[tuple[BatchPlan, str]]:
    """Pure: the planned batches the holds let through: none in a held scope before its
    retry time, then one Job at a time there (while none of the scope is active)."""
    blocking = [h for h in holds if h.blocking]
    busy = {j.pool for j in active}
    tried: set[str] = set()
    kept = []
    for batch, pool in chosen:
        over = {h.pool for h in blocking if h.pool in (pool, ALL_POOLS)}
        if any(now < h.retry_at for h in blocking if h.pool in over):
            continue
        if over & tried or any(busy if s == ALL_POOLS else s in busy for s in over):
            continue
        tried |= over
        kept.append((batch, pool))
    return kept


def degraded(breaker_reason: str | None, holds: Sequence[Hold]) -> tuple[str, str] | None:
    """Pure: (reason, message) of the Degraded condition, the most important cause first
    (the others' reasons named after it); None when healthy."""
    causes = [(h.reason, h.describe()) for h in holds if h.blocking and h.pool == ALL_POOLS]
    if breaker_reason is not None:
        causes.append((BREAKER_OPEN, breaker_reason))
    causes += [(h.reason, h.describe()) for h in holds if h.blocking and h.pool != ALL_POOLS]
    causes += [(h.reason, h.describe()) for h in holds if not h.blocking]
    if not causes:
        return None
    (reason, message), rest = causes[0], causes[1:]
    if rest:
        message += f" (also: {', '.join(r for r, _ in rest)})"
    return reason, message
