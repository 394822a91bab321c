"""One tick of the control loop, whichever the runner: the runner observes
(:class:`Observation`: its workers as settlement.WorkerView, their leases, the runnable
groups, the circuit breaker's word), :func:`decide` turns the library's :class:`Policy`
and the observation into a :class:`Plan` (which leases to end and how, which ended
workers to forget, which workers to launch on which pool: a value to print and test
with tables), and :func:`apply` carries the plan out through the runner's
:class:`Runner` port. The operator (k8s/reconcile.py: Jobs) and `facescan scan`
(local.py: subprocesses) both run it; the operator adds its own steps around it
(k8s/decide.py: stuck Jobs, the register Job, the status).

The lease rule and the settlement rule are settlement.py's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.settlement import Release, WorkerView, settle, unclaimed
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import GroupCount, LeaseInfo, Released


@dataclass(frozen=True)
class Pool:
    """Where workers run: a Kubernetes node pool, or this machine."""

    name: str
    models: frozenset[str] | None = None
    """The models it serves; None: every model."""
    max_workers: int | None = None
    max_memory_bytes: int | None = None
    """A worker on it gets at most this much memory (its images step down if short)."""


@dataclass(frozen=True)
class Policy:
    """How a library is worked, whichever the runner."""

    cascade: tuple[tuple[str, float], ...]
    batch_size: int
    workers: int
    """Most workers at once (a FaceScan's parallelism, `scan --workers`)."""
    max_dimension: int
    calibration: CalibrationTable
    pools: tuple[Pool, ...] = (Pool("local"),)
    keep: timedelta = timedelta(0)
    """How long an ended worker with nothing to settle is kept before it is forgotten."""
    memory_budget: int | None = None
    """Total memory its running workers may be given; None for no budget."""
    worker_memory_cap: int | None = None
    suspend: bool = False

    def pool_for(self, model: str) -> Pool:
        return next(p for p in self.pools if p.models is None or model in p.models)


@dataclass(frozen=True)
class Observation:
    """What a runner saw of one library at the start of a tick."""

    now: datetime
    workers: Sequence[WorkerView]
    leases: Sequence[LeaseInfo]
    """The leases of this runner's workers only."""
    groups: Sequence[GroupCount]
    """Runnable images per (cascade step, size class), read after the leases."""
    allowed: int | None = None
    """The circuit breaker's word: None no limit, 0 nothing, 1 a probe of one image."""
    present: Collection[str] = ()
    """Workers that still run somewhere though the runner lost them (see settle)."""
    returning: Sequence[GroupCount] = ()
    """Images the runner's own steps of this tick move (a stuck Job's batch sent down
    the cascade): planned now, as the images of the releases are."""


@dataclass(frozen=True)
class Launch:
    batch: BatchPlan
    pool: str

    def describe(self) -> str:
        b = self.batch
        return (
            f"up to {b.limit} images, {b.model}@{b.scale:g}, {b.memory_bytes // MIB} MiB, "
            f"pool {self.pool}"
        )


@dataclass(frozen=True)
class Plan:
    """One tick's decisions for one library."""

    releases: tuple[Release, ...] = ()
    forget: tuple[str, ...] = ()
    launches: tuple[Launch, ...] = ()
    runnable: bool = False
    """Images are runnable now (launched or waiting for room)."""
    probe: bool = False
    """The circuit breaker allowed one probe: a launch is it (breaker.probe_started)."""

    def lines(self) -> list[str]:
        """The plan as a person reads it (`facescan scan -v` logs it each tick)."""
        return [
            *(
                f"release {r.owner}: charge {r.charge or 'nothing'} ({r.reason})"
                for r in self.releases
            ),
            *(f"forget {name}" for name in self.forget),
            *(
                f"launch step {x.batch.step} size class {x.batch.size_class}: {x.describe()}"
                for x in self.launches
            ),
        ]


def decide(policy: Policy, seen: Observation) -> Plan:
    """Pure: the plan of one tick. Ended workers are settled (:func:`settle`); the images
    their releases hand back (the OOM culprit at the next cascade step) are planned in
    this very tick with those runnable and not spoken for (:func:`unclaimed`); batches
    go to the first pool serving their step's model, within each pool's limits."""
    settlement = settle(seen.workers, seen.leases, seen.now, policy.keep, seen.present)
    leases = {lease.owner: lease for lease in seen.leases}
    back = [g for r in settlement.releases for g in _handed_back(r, leases[r.owner], policy)]
    active = [w for w in seen.workers if not w.finished]
    groups = unclaimed(_merged([*seen.groups, *seen.returning, *back]), active, leases)
    launches = () if policy.suspend else tuple(_launches(policy, groups, active, seen.allowed))
    return Plan(
        tuple(settlement.releases),
        tuple(settlement.forget),
        launches,
        bool(groups),
        seen.allowed == 1,
    )


def _handed_back(release: Release, lease: LeaseInfo, policy: Policy) -> list[GroupCount]:
    """The images a release makes runnable at once: the batch but a charged image (which
    waits for its retry), and an OOM culprit at the next step (no attempt charged there)."""
    charged = release.charge is not None
    back = [GroupCount(lease.step, lease.size_class, lease.images - int(charged))]
    if release.oom and lease.step + 1 < len(policy.cascade):
        back.append(GroupCount(lease.step + 1, lease.size_class, 1))
    return [g for g in back if g.runnable > 0]


def _merged(groups: Sequence[GroupCount]) -> list[GroupCount]:
    counts: Counter[tuple[int, int]] = Counter()
    for g in groups:
        counts[(g.step, g.size_class)] += g.runnable
    return [GroupCount(step, size, n) for (step, size), n in counts.items()]


def _launches(
    policy: Policy, groups: Sequence[GroupCount], active: Sequence[WorkerView], allowed: int | None
) -> list[Launch]:
    settings = PlanSettings(
        policy.cascade, policy.batch_size, policy.max_dimension, policy.calibration
    )
    capacity = Capacity(policy.workers, policy.memory_budget, policy.worker_memory_cap)
    running = [RunningBatch(w.name, w.step, w.size_class, w.memory_bytes) for w in active]
    per_pool = Counter(w.pool for w in active)
    chosen = []
    for batch in plan(groups, running, capacity, settings, allowed=allowed):
        pool = policy.pool_for(batch.model)
        if pool.max_workers is not None and per_pool[pool.name] >= pool.max_workers:
            continue
        per_pool[pool.name] += 1
        if pool.max_memory_bytes is not None and batch.memory_bytes > pool.max_memory_bytes:
            batch = replace(batch, memory_bytes=pool.max_memory_bytes)
        chosen.append(Launch(batch, pool.name))
    return chosen


class Runner(Protocol):
    """What :func:`apply` needs of a runner."""

    async def release(self, release: Release) -> Released: ...

    async def forget(self, worker: str) -> None: ...

    async def launch(self, launch: Launch) -> str:
        """Starts a worker for the launch's assignment; its name (its lease's owner)."""
        ...


@dataclass
class Applied:
    released: list[tuple[Release, Released]] = field(default_factory=list)
    launched: list[tuple[str, Launch]] = field(default_factory=list)
    refused: BaseException | None = None
    """The first launch the runner refused (the others were still tried)."""


async def apply(plan: Plan, runner: Runner) -> Applied:
    """Carries a plan out: leases ended one by one (an outage stops it part way, and the
    next tick settles the rest), then the forgotten workers and the launches together."""
    done = Applied()
    for release in plan.releases:
        done.released.append((release, await runner.release(release)))
    await asyncio.gather(*(runner.forget(name) for name in plan.forget))
    results = await asyncio.gather(
        *(runner.launch(launch) for launch in plan.launches), return_exceptions=True
    )
    for launch, result in zip(plan.launches, results, strict=True):
        if isinstance(result, BaseException):
            done.refused = done.refused or result
        else:
            done.launched.append((result, launch))
    return done
