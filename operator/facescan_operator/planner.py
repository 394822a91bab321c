"""The planner: which batches to claim now, of what size, with what memory.

A pure function of what was observed (runnable images per cascade step and size class,
the batches running) and the settings (capacity, cascade, calibration). Both runners
call it: the local runner (subprocesses) and the Kubernetes operator (Jobs). No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from facescan_operator.sizing import CalibrationTable, memory_bytes
from facescan_queue.models import GroupCount


@dataclass(frozen=True)
class RunningBatch:
    """A batch with a live worker."""

    owner: str
    step: int
    size_class: int
    memory_bytes: int


@dataclass(frozen=True)
class Capacity:
    """What may run at once."""

    workers: int
    """Most workers (processes, Jobs) at a time."""
    memory_bytes: int | None = None
    """Total memory the running workers may be given; None for no budget."""
    worker_memory_cap: int | None = None
    """Most memory one worker may get (``--memory-limit``); a batch that needs more runs
    at the cap, and an image that really needs more fails as oom and steps down."""


@dataclass(frozen=True)
class PlanSettings:
    cascade: tuple[tuple[str, float], ...]
    batch_size: int
    max_dimension: int
    calibration: CalibrationTable


@dataclass(frozen=True)
class BatchPlan:
    """Claim up to ``limit`` images of (step, size class) for one worker."""

    step: int
    size_class: int
    limit: int
    model: str
    scale: float
    memory_bytes: int


def plan(
    groups: Sequence[GroupCount],
    running: Sequence[RunningBatch],
    capacity: Capacity,
    settings: PlanSettings,
    *,
    allowed: int | None = None,
) -> list[BatchPlan]:
    """The batches to start now.

    Groups at later cascade steps go first (an OOM culprit is rescheduled at once), then
    smaller size classes. Batches are as large as ``batch_size`` but split the runnable
    images across the free workers, so ten images on four workers run as 3+3+3+1.
    ``allowed`` is the circuit breaker's word: None no limit, 0 nothing, 1 a probe of
    one image.
    """
    slots = capacity.workers - len(running)
    if allowed is not None:
        slots = min(slots, allowed)
    if slots <= 0:
        return []
    budget = None
    if capacity.memory_bytes is not None:
        budget = capacity.memory_bytes - sum(r.memory_bytes for r in running)
    total = sum(g.runnable for g in groups)
    per_batch = min(settings.batch_size, max(1, math.ceil(total / slots)))
    if allowed == 1:
        per_batch = 1
    plans: list[BatchPlan] = []
    for group in sorted(groups, key=lambda g: (-g.step, g.size_class)):
        step = min(group.step, len(settings.cascade) - 1)
        model, scale = settings.cascade[step]
        need = memory_bytes(
            settings.calibration, model, group.size_class, settings.max_dimension, scale
        )
        if capacity.worker_memory_cap is not None:
            need = min(need, capacity.worker_memory_cap)
        remaining = group.runnable
        while remaining > 0 and len(plans) < slots:
            nothing_running = not running and not plans
            if budget is not None and need > budget and not nothing_running:
                break
            limit = min(per_batch, remaining)
            plans.append(BatchPlan(group.step, group.size_class, limit, model, scale, need))
            remaining -= limit
            if budget is not None:
                budget -= need
    return plans
