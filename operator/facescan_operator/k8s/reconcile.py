"""Reconcile one FaceScan: observe -> decide (pure, k8s/decide.py) -> apply.

Called by the kopf handlers on every timer tick and on create/update. Level-based: it
reads everything it decides from the database and the API server each time, so it
converges after an operator restart, a missed event or a deleted Job.

:func:`observe` reads the tick's :class:`ScanObservation` before anything is changed:
the detector and register Jobs and their pods, why pods without a Job could not be
created, this FaceScan's leases, the runnable groups (after the leases: a Job that
claims in between is counted twice, so one tick plans less, never not at all), the
recent outcomes (which the circuit breaker sees), the counts. decide_scan makes the
:class:`ScanPlan`; :func:`apply` carries it out: the library's policy written if the
spec changed, stuck Jobs handed back uncharged and deleted, then the runner-neutral
plan through :class:`JobRunner` (leases of ended Jobs released and charged as the
settlement rule says, Jobs past their TTL deleted, new Jobs created: each Job's
detector claims its own batch when it starts, so a Job waiting for Kueue, a node or an
image pull holds no lease), expired leases reclaimed, the register Job created or
deleted. The status is the plan's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from facescan_operator import loop
from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s import people, register, stuck
from facescan_operator.k8s.decide import Event, ScanObservation, ScanPlan, decide_scan
from facescan_operator.k8s.jobs import (
    LABEL_COMPONENT,
    LABEL_SCAN,
    JobBatch,
    ScanRef,
    batch_job_name,
    build_detector_job,
    owned_by,
    scan_labels,
)
from facescan_operator.k8s.observe import pod_owners, view_jobs
from facescan_operator.k8s.ports import KubeApi as KubeApi
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.status import changed as changed
from facescan_operator.k8s.status import status_of as status_of
from facescan_operator.k8s.utility_jobs import view
from facescan_operator.settlement import Release
from facescan_operator.sizing import CalibrationTable
from facescan_queue.models import AttemptClock, LibraryPolicy, Released
from facescan_queue.repository import Queue


@dataclass
class Outcome:
    """What one reconcile did, for the handler to report."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    created: list[tuple[str, str]] = field(default_factory=list)
    oom_killed: int = 0
    attempt_clock: AttemptClock | None = None
    """Where counting finished attempts stands after this tick (pass it to the next)."""
    attempts: dict[tuple[str, str | None], int] = field(default_factory=dict)
    """Attempts finished since the previous tick, by (outcome, failure type)."""
    written: LibraryPolicy | None = None
    """The library policy in the database after this tick, as this operator wrote it."""


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
    written: LibraryPolicy | None = None,
) -> Outcome:
    """One level-based pass over a FaceScan; ``attempt_clock`` is the previous tick's,
    ``written`` the library policy the previous tick left (None: write it)."""
    now = now or datetime.now(UTC)
    seen = await observe(scan, spec, queue, kube, breaker, previous_status, now, written)
    plan = decide_scan(spec, calibration, seen)
    library = spec.library_name(scan.namespace, scan.name)
    clock = await queue.attempt_clock(library)
    attempts = await queue.attempt_outcomes(library, attempt_clock, clock) if attempt_clock else {}
    outcome = Outcome(plan.status, plan.events, attempt_clock=clock, attempts=attempts)
    outcome.written = plan.library or written
    await apply(plan, JobRunner(scan, spec, queue, kube, library), breaker, outcome)
    return outcome


async def observe(
    scan: ScanRef,
    spec: FaceScanSpec,
    queue: Queue,
    kube: KubeApi,
    breaker: CircuitBreaker,
    previous_status: dict[str, Any],
    now: datetime,
    written: LibraryPolicy | None,
) -> ScanObservation:
    """Reads the tick's observation; changes nothing but the breaker, which sees the
    recent outcomes."""
    library = spec.library_name(scan.namespace, scan.name)
    labels = scan_labels(scan)
    pods = await kube.list_pods(scan.namespace, labels)
    # one list for the detector and the register Jobs, told apart by their component
    every = await kube.list_jobs(scan.namespace, {LABEL_SCAN: scan.name})
    by_component: dict[str, list[dict[str, Any]]] = {}
    for job in every:
        component = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT)
        by_component.setdefault(str(component), []).append(job)
    jobs = view_jobs(by_component.get(labels[LABEL_COMPONENT], []), pods)
    refusals = await stuck.refusals(kube, scan.namespace, jobs)
    # this FaceScan's own leases only: another FaceScan (of this namespace) may scan the
    # same library, and its Jobs are not in this FaceScan's list
    leases = [lease for lease in await queue.leases(library) if owned_by(scan.name, lease.owner)]
    cap = max(1, spec.parallelism * spec.batch_size * 2)
    groups = await queue.runnable_groups(library, cap=cap)
    outcomes = await queue.recent_outcomes(
        library, window=breaker.window, after_id=breaker.after_id
    )
    was = breaker.state
    breaker.observe(outcomes, now.timestamp())
    people_jobs = view(by_component.get(people.COMPONENT, []))
    last = people.PeopleSync.of(previous_status).last_job
    # the library's people counts, once for each people Job that succeeded
    fresh = [j for j in people_jobs if j.succeeded and j.name != last]
    return ScanObservation(
        now=now,
        jobs=jobs,
        refusals=refusals,
        present=pod_owners(pods),
        leases=leases,
        groups=groups,
        counts=await queue.status(library),
        register_jobs=register.view(by_component.get(register.COMPONENT, [])),
        breaker=breaker,
        breaker_was=was,
        previous=previous_status,
        written=written,
        people_jobs=people_jobs,
        people_counts=await queue.people_counts(library) if fresh else None,
    )


@dataclass
class JobRunner:
    """The loop's Runner port as Kubernetes Jobs: a worker is a detector Job."""

    scan: ScanRef
    spec: FaceScanSpec
    queue: Queue
    kube: KubeApi
    library: str

    async def release(self, release: Release) -> Released:
        return await self.queue.release(release.owner, charge=release.charge, error=release.reason)

    async def forget(self, worker: str) -> None:
        await self.kube.delete_job(self.scan.namespace, worker)

    async def launch(self, launch: loop.Launch) -> str:
        b = launch.batch
        name = batch_job_name(self.scan.name, b.step, b.size_class)
        batch = JobBatch(name, b.step, b.size_class, b.model, b.scale, b.memory_bytes, b.limit)
        await self.kube.create_job(
            self.scan.namespace, build_detector_job(self.scan, self.spec, batch)
        )
        return name


async def apply(
    plan: ScanPlan, runner: JobRunner, breaker: CircuitBreaker, outcome: Outcome
) -> None:
    """Carries a tick's plan out; what it did goes into ``outcome``."""
    queue, namespace, events = runner.queue, runner.scan.namespace, outcome.events
    if plan.library is not None:
        await queue.ensure_library(runner.library, plan.library)
    if plan.distances is not None:
        await queue.set_people_settings(runner.library, plan.distances)
    for found, job, leased in plan.stuck:
        await stuck.hand_back(
            queue,
            runner.library,
            found,
            job,
            leased=leased,
            lease_seconds=runner.spec.lease_seconds,
        )
    # the API calls of a tick go out together: each is a round trip to the API server
    await asyncio.gather(*(runner.kube.delete_job(namespace, s.job) for s, _, _ in plan.stuck))
    done = await loop.apply(plan.loop, runner)
    for release, released in done.released:
        if release.oom and released.charged_image is not None:
            outcome.oom_killed += 1
            events.append(
                (
                    "Warning",
                    "BatchOOMKilled",
                    f"Job {release.owner}: {release.reason}; its image moves to the "
                    f"next cascade step, {released.released} others returned",
                )
            )
    if plan.loop.probe and done.launched:
        breaker.probe_started()
    for name, launch in done.launched:
        outcome.created.append((name, launch.pool))
        events.append(("Normal", "JobCreated", f"{name}: {launch.describe()}"))
    for expired in await queue.reclaim_expired(runner.library):
        events.append(
            (
                "Warning",
                "LeaseExpired",
                f"{expired.owner} stopped heartbeating; {expired.released} images returned",
            )
        )
    if done.refused is not None:
        raise done.refused  # nothing was leased for it; the next tick plans it again
    registering = plan.registering
    await asyncio.gather(*(runner.kube.delete_job(namespace, n) for n in registering.delete))
    if registering.create:
        name = register.register_job_name(runner.scan.name)
        await runner.kube.create_job(
            namespace, register.build_register_job(runner.scan, runner.spec, name)
        )
        events.append(("Normal", "RegisterJobCreated", f"{name}: registers the library's files"))
    peopling = plan.people
    if peopling is not None:
        await asyncio.gather(*(runner.kube.delete_job(namespace, n) for n in peopling.delete))
    if peopling is not None and peopling.create:
        name = people.people_job_name(runner.scan.name)
        await runner.kube.create_job(
            namespace, people.build_people_job(runner.scan, runner.spec, name)
        )
        events.append(("Normal", "PeopleJobCreated", f"{name}: matches new faces to people"))
