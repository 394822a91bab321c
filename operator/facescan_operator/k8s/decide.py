"""The loop's pure decisions over what a tick observed: how ended Jobs settle their
leases, which runnable images no waiting Job will take, which batches start on which
pool. No I/O; reconcile.py observes, calls these and applies what they return (tested
with tables in tests/unit/k8s/test_reconcile_plan.py).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from facescan_operator.k8s.observe import JobOutcome, JobView
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import GroupCount, LeaseInfo, LibraryPolicy
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
    jobs: Sequence[JobView],
    leases: Sequence[LeaseInfo],
    now: datetime,
    ttl: timedelta,
    pods_of: Collection[str] = (),
) -> Settlement:
    """Pure: which leases to end (and how to charge them) and which Jobs to delete.
    ``pods_of``: the Jobs that still have a pod, if only a terminating one: a Job deleted
    while its pod hands its image back is not a vanished one."""
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
        vanished = owner not in by_name and owner not in pods_of
        if vanished and now - lease.claimed_at >= VANISHED_GRACE:
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
