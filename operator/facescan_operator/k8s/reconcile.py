"""Reconcile one FaceScan: observe (queue, Jobs, pods) -> plan (pure) -> apply.

Called by the kopf handlers on every timer tick and on create/update. Level-based: it
reads everything it decides from the database and the API server each time, so it
converges after an operator restart, a missed event or a deleted Job.

Each tick: (1) settle ended Jobs: release their leases, charging ``oom`` to the image an
OOMKilled pod had started, nothing for a disrupted (preempted, evicted) pod, ``crash``
otherwise (a pod that exited 0 is charged only if an image is still in progress in the
database); leases whose Job vanished are released too; expired leases are reclaimed;
finished Jobs past their TTL are deleted; Jobs whose pods cannot be created or run are
handed back uncharged and deleted, and hold back launching (stuck.py). (2) plan new
batches with the same planner as the local runner (so an OOM culprit settled in (1) is
rescheduled in this very tick) from the runnable images no waiting Job will claim, and
create their Jobs, as far as the holds of (1) let them; each Job's detector claims its
own batch when it starts, so a Job waiting for Kueue, a node or an image pull holds no
lease. (3) compute the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from facescan_operator.breaker import BreakerState, CircuitBreaker
from facescan_operator.k8s import register, stuck
from facescan_operator.k8s.jobs import (
    JobBatch,
    ScanRef,
    batch_job_name,
    build_detector_job,
    owned_by,
)
from facescan_operator.k8s.observe import JobOutcome, JobView
from facescan_operator.k8s.ports import KubeApi as KubeApi
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.status import changed as changed
from facescan_operator.k8s.status import status_of as status_of
from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import (
    AttemptClock,
    GroupCount,
    LeaseInfo,
    LibraryPolicy,
)
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

VANISHED_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class Release:
    owner: str
    charge: ErrorType | None
    reason: str
    oom: bool = False


@dataclass(frozen=True)
class Settlement:
    releases: list[Release]
    delete_jobs: list[str]


def settle(
    jobs: Sequence[JobView], leases: Sequence[LeaseInfo], now: datetime, ttl: timedelta
) -> Settlement:
    """Pure: which leases to end (and how to charge them) and which Jobs to delete."""
    leased = {lease.owner: lease for lease in leases}
    by_name = {job.name: job for job in jobs}
    releases, deletions = [], []
    for job in jobs:
        if not job.finished:
            continue
        if job.name in leased:
            if job.outcome is JobOutcome.OOM_KILLED:
                releases.append(
                    Release(
                        job.name,
                        ErrorType.OOM,
                        f"pod {job.detail} at its {job.memory_bytes // MIB} MiB memory limit",
                        oom=True,
                    )
                )
            elif job.outcome is JobOutcome.DISRUPTED:
                releases.append(Release(job.name, None, job.detail))
            else:
                releases.append(
                    Release(
                        job.name,
                        ErrorType.CRASH,
                        f"detector pod ended ({job.detail}) with the image in progress",
                    )
                )
        elif job.finished_at is None or now - job.finished_at >= ttl:
            deletions.append(job.name)
    for owner, lease in leased.items():
        if owner not in by_name and now - lease.claimed_at >= VANISHED_GRACE:
            releases.append(
                Release(owner, ErrorType.CRASH, "its Job vanished (deleted, or its node is gone)")
            )
    return Settlement(releases, deletions)


def unclaimed(
    groups: Sequence[GroupCount], active: Sequence[JobView], leased: Collection[str]
) -> list[GroupCount]:
    """Pure: the runnable groups less the batches of active Jobs whose detector has not
    claimed its own yet (waiting for Kueue, a node or an image pull): those images are
    spoken for, and a new Job for them would find nothing."""
    waiting: dict[tuple[int, int], int] = {}
    for job in active:
        if job.name not in leased:
            key = (job.step, job.size_class)
            waiting[key] = waiting.get(key, 0) + job.images
    left = [
        GroupCount(g.step, g.size_class, g.runnable - waiting.get((g.step, g.size_class), 0))
        for g in groups
    ]
    return [g for g in left if g.runnable > 0]


def policy_of(spec: FaceScanSpec) -> LibraryPolicy:
    r = spec.retry_policy
    return LibraryPolicy(
        cascade_models=tuple(s.model for s in spec.cascade),
        cascade_scales=tuple(s.scale for s in spec.cascade),
        backoff_base_s=r.backoff_base_seconds,
        backoff_multiplier=r.backoff_multiplier,
        backoff_cap_s=r.backoff_cap_seconds,
        max_attempts=r.max_attempts,
    )


def plan_batches(
    spec: FaceScanSpec,
    groups: Sequence[GroupCount],
    active: Sequence[JobView],
    calibration: CalibrationTable,
    allowed: int | None,
) -> list[tuple[BatchPlan, str]]:
    """Pure: the batches to start and the pool of each, within per-pool limits."""
    if spec.suspend:
        return []
    cascade = tuple((s.model, s.scale) for s in spec.cascade)
    settings = PlanSettings(cascade, spec.batch_size, spec.max_dimension, calibration)
    running = [RunningBatch(j.name, j.step, j.size_class, j.memory_bytes) for j in active]
    per_pool = {pool.name: sum(1 for j in active if j.pool == pool.name) for pool in spec.pools}
    chosen = []
    for batch in plan(
        groups, running, Capacity(workers=spec.parallelism), settings, allowed=allowed
    ):
        pool = spec.pool_for(batch.model)
        if pool.max_concurrent_jobs is not None and per_pool[pool.name] >= pool.max_concurrent_jobs:
            continue
        per_pool[pool.name] += 1
        if pool.max_memory_mib is not None:
            cap = pool.max_memory_mib * MIB
            if batch.memory_bytes > cap:
                batch = BatchPlan(
                    batch.step, batch.size_class, batch.limit, batch.model, batch.scale, cap
                )
        chosen.append((batch, pool.name))
    return chosen


@dataclass
class Outcome:
    """What one reconcile did, for the handler to report."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    created: list[tuple[str, str]] = field(default_factory=list)
    oom_killed: int = 0
    attempt_clock: AttemptClock | None = None
    """Where counting finished attempts stands after this tick (pass it to the next)."""
    attempts: dict[tuple[str, str | None], int] = field(default_factory=dict)
    """Attempts finished since the previous tick, by (outcome, failure type)."""


async def reconcile(
    scan: ScanRef,
    spec: FaceScanSpec,
    queue: Queue,
    kube: KubeApi,
    breaker: CircuitBreaker,
    previous_status: dict[str, Any],
    *,
    calibration: CalibrationTable,
    now: datetime | None = None,
    attempt_clock: AttemptClock | None = None,
) -> Outcome:
    """One level-based pass over a FaceScan; ``attempt_clock`` is the previous tick's."""
    from facescan_operator.k8s.jobs import scan_labels
    from facescan_operator.k8s.observe import view_jobs

    now = now or datetime.now(UTC)
    library = spec.library_name(scan.namespace, scan.name)
    events: list[tuple[str, str, str]] = []
    await queue.ensure_library(library, policy_of(spec))

    # (1) settle what ended
    labels = scan_labels(scan)
    jobs = view_jobs(
        await kube.list_jobs(scan.namespace, labels), await kube.list_pods(scan.namespace, labels)
    )
    refusals = await stuck.refusals(kube, scan.namespace, jobs)
    # this FaceScan's own leases only: another FaceScan (of this namespace) may scan the
    # same library, and its Jobs are not in this FaceScan's list
    leases = [lease for lease in await queue.leases(library) if owned_by(scan.name, lease.owner)]
    settlement = settle(jobs, leases, now, timedelta(seconds=spec.ttl_seconds_after_finished))
    leased = {lease.owner for lease in leases}
    found = stuck.find(jobs, refusals, now, len(spec.cascade))
    views = {job.name: job for job in jobs}
    returned = {
        s.job: await stuck.hand_back(
            queue,
            library,
            s,
            views[s.job],
            leased=s.job in leased,
            lease_seconds=spec.lease_seconds,
        )
        for s in found
    }
    holds, held_events = stuck.update_holds(
        stuck.holds_of(previous_status), jobs, found, returned, [p.name for p in spec.pools], now
    )
    events += held_events
    oom_killed = 0
    for release in settlement.releases:
        released = await queue.release(release.owner, charge=release.charge, error=release.reason)
        if release.oom and released.charged_image is not None:
            oom_killed += 1
            events.append(
                (
                    "Warning",
                    "BatchOOMKilled",
                    f"Job {release.owner}: {release.reason}; its image moves to the "
                    f"next cascade step, {released.released} others returned",
                )
            )
    for expired in await queue.reclaim_expired(library):
        events.append(
            (
                "Warning",
                "LeaseExpired",
                f"{expired.owner} stopped heartbeating; {expired.released} images returned",
            )
        )
    # the API calls of a tick go out together: each is a round trip to the API server
    gone = settlement.delete_jobs + [s.job for s in found]
    await asyncio.gather(*(kube.delete_job(scan.namespace, n) for n in gone))
    active = [j for j in jobs if not j.finished and j.name not in gone]

    # (2) schedule
    outcomes = await queue.recent_outcomes(
        library, window=breaker.window, after_id=breaker.after_id
    )
    was = breaker.state
    breaker.observe(outcomes, now.timestamp())
    if breaker.state != was and breaker.state is BreakerState.OPEN:
        events.append(("Warning", "BreakerOpen", breaker.reason))
    elif breaker.state != was and breaker.state is BreakerState.CLOSED:
        events.append(("Normal", "BreakerClosed", "attempts succeed again"))
    cap = max(1, spec.parallelism * spec.batch_size * 2)
    # read after the leases: a Job that claims in between is counted twice (one tick plans
    # less), never not at all (which would launch a Job for images already taken)
    groups = unclaimed(await queue.runnable_groups(library, cap=cap), active, leased)
    allowed = breaker.allowed(now.timestamp())
    launches = [
        (batch_job_name(scan.name, batch.step, batch.size_class), batch, pool)
        for batch, pool in stuck.gate(
            plan_batches(spec, groups, active, calibration, allowed), holds, active, now
        )
    ]
    bodies = [
        build_detector_job(
            scan,
            spec,
            JobBatch(owner, b.step, b.size_class, b.model, b.scale, b.memory_bytes, b.limit),
        )
        for owner, b, _ in launches
    ]
    results = await asyncio.gather(
        *(kube.create_job(scan.namespace, body) for body in bodies), return_exceptions=True
    )
    created: list[tuple[str, str]] = []
    refused: BaseException | None = None
    for (owner, batch, pool), result in zip(launches, results, strict=True):
        if isinstance(result, BaseException):
            refused = refused or result  # nothing was leased for it
            continue
        if allowed == 1:
            breaker.probe_started()
        created.append((owner, pool))
        events.append(
            (
                "Normal",
                "JobCreated",
                f"{owner}: up to {batch.limit} images, {batch.model}@{batch.scale:g}, "
                f"{batch.memory_bytes // MIB} MiB, pool {pool}",
            )
        )
    if refused is not None:
        raise refused

    # the library's files, registered by a Job when the FaceScan is new and then
    # every spec.library.rescanIntervalSeconds
    registering = register.decide(
        spec,
        register.view(await kube.list_jobs(scan.namespace, register.register_labels(scan))),
        register.Registration.of(previous_status),
        now,
    )
    events += registering.events
    await asyncio.gather(*(kube.delete_job(scan.namespace, n) for n in registering.delete))
    if registering.create and not spec.suspend:
        name = register.register_job_name(scan.name)
        await kube.create_job(scan.namespace, register.build_register_job(scan, spec, name))
        events.append(("Normal", "RegisterJobCreated", f"{name}: registers the library's files"))

    # (3) status
    clock = await queue.attempt_clock(library)
    attempts = await queue.attempt_outcomes(library, attempt_clock, clock) if attempt_clock else {}
    counts = await queue.status(library)
    if counts.pending == 0 and counts.leased == 0:
        holds = []  # nothing left to run: nothing held back
    before_dead = ((previous_status.get("counts") or {}).get("dead")) or 0
    if counts.dead > before_dead:
        events.append(
            (
                "Warning",
                "ImageDead",
                f"{counts.dead - before_dead} images gave up after their last attempt; "
                "see `facescan failures --dead`, requeue with `facescan requeue`",
            )
        )
    status = status_of(
        counts,
        len(active) + len(created),
        spec.suspend,
        breaker,
        bool(groups),
        previous_status,
        now,
        holds,
        registered=registering.registration.registered_at is not None
        or not spec.library.rescan_interval_seconds,
    )
    status["registration"] = registering.registration.as_json()
    return Outcome(status, events, created, oom_killed, clock, attempts)
