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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from facescan_operator.breaker import BreakerState, CircuitBreaker
from facescan_operator.k8s import holds as holding
from facescan_operator.k8s import register, stuck
from facescan_operator.k8s.decide import plan_batches as plan_batches
from facescan_operator.k8s.decide import policy_of as policy_of
from facescan_operator.k8s.jobs import (
    JobBatch,
    ScanRef,
    batch_job_name,
    build_detector_job,
    owned_by,
)
from facescan_operator.k8s.ports import KubeApi as KubeApi
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.status import changed as changed
from facescan_operator.k8s.status import status_of as status_of
from facescan_operator.loop import settle, unclaimed
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import (
    AttemptClock,
)
from facescan_queue.repository import Queue


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
    from facescan_operator.k8s.jobs import LABEL_COMPONENT, LABEL_SCAN, scan_labels
    from facescan_operator.k8s.observe import pod_owners, view_jobs

    now = now or datetime.now(UTC)
    library = spec.library_name(scan.namespace, scan.name)
    events: list[tuple[str, str, str]] = []
    await queue.ensure_library(library, policy_of(spec))

    # (1) settle what ended
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
    settlement = settle(
        jobs, leases, now, timedelta(seconds=spec.ttl_seconds_after_finished), pod_owners(pods)
    )
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
    holds, held_events = holding.update_holds(
        holding.holds_of(previous_status), jobs, found, returned, [p.name for p in spec.pools], now
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
    gone = list(dict.fromkeys([*settlement.forget, *(s.job for s in found)]))
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
        for batch, pool in holding.gate(
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
        register.view(by_component.get(register.COMPONENT, [])),
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
