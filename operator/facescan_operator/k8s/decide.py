"""The operator's pure decisions over what a tick observed, beside the runner-neutral
ones of facescan_operator.loop (settling ended workers, what no waiting worker will
claim): which batches start on which pool, and the library's policy from the spec. No
I/O; reconcile.py observes, calls these and applies what they return (tested with
tables in tests/unit/k8s/test_reconcile_plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from facescan_operator.k8s.observe import JobView
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import GroupCount, LibraryPolicy


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
