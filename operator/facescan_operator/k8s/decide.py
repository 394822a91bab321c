"""A FaceScan's tick, decided: pure, no I/O, tested with tables (tests/unit/k8s).

reconcile.py observes a :class:`ScanObservation`; :func:`decide_scan` turns it into a
:class:`ScanPlan`, which reconcile.py applies. The detector Jobs are the runner-neutral
loop's (loop.decide: settle ended Jobs, launch right-sized ones on their pools); around
it come the operator's own steps: stuck Jobs (stuck.find) handed back and held
(holds.py), the register Job (register.decide), the library's policy as the spec says
it, the Events and the status.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from facescan_operator.breaker import BreakerState, CircuitBreaker
from facescan_operator.k8s import holds as holding
from facescan_operator.k8s import people, register, stuck
from facescan_operator.k8s.holds import Stuck
from facescan_operator.k8s.observe import JobView, PodTrouble
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.status import status_of
from facescan_operator.k8s.utility_jobs import UtilityJob
from facescan_operator.loop import Launch, Observation, Plan, Policy, Pool, decide
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.models import (
    GroupCount,
    LeaseInfo,
    LibraryPolicy,
    MatchDistances,
    PeopleCounts,
    QueueStatus,
)

Event = tuple[str, str, str]
"""(type, reason, message) of a Kubernetes Event on the FaceScan."""


def policy(spec: FaceScanSpec, calibration: CalibrationTable) -> Policy:
    """How the loop works this FaceScan's library."""
    return Policy(
        cascade=tuple((s.model, s.scale) for s in spec.cascade),
        batch_size=spec.batch_size,
        workers=spec.parallelism,
        max_dimension=spec.max_dimension,
        calibration=calibration,
        pools=tuple(
            Pool(
                p.name,
                frozenset(p.models),
                p.max_concurrent_jobs,
                p.max_memory_mib * MIB if p.max_memory_mib is not None else None,
            )
            for p in spec.pools
        ),
        keep=timedelta(seconds=spec.ttl_seconds_after_finished),
        suspend=spec.suspend,
    )


def policy_of(spec: FaceScanSpec) -> LibraryPolicy:
    """The library row's cascade, max dimension, video sampling and retry policy, as the
    spec says (the detector reads its step's model and scale, the max dimension and how
    to sample videos, and the queue its retry policy, from there)."""
    r = spec.retry_policy
    return LibraryPolicy(
        cascade_models=tuple(s.model for s in spec.cascade),
        cascade_scales=tuple(s.scale for s in spec.cascade),
        backoff_base_s=r.backoff_base_seconds,
        backoff_multiplier=r.backoff_multiplier,
        backoff_cap_s=r.backoff_cap_seconds,
        max_attempts=r.max_attempts,
        max_dimension=spec.max_dimension,
        frames_per_video=spec.frames_per_video,
        min_frame_spacing_s=spec.min_frame_spacing_seconds,
    )


@dataclass(frozen=True)
class ScanObservation:
    """What one tick read of a FaceScan, before it changed anything."""

    now: datetime
    jobs: Sequence[JobView]
    """Its detector Jobs."""
    refusals: Mapping[str, PodTrouble]
    """Why Jobs without a pod have none (their FailedCreate Events)."""
    present: Collection[str]
    """Jobs that still have pods (see settlement.settle)."""
    leases: Sequence[LeaseInfo]
    """The leases of its own Jobs."""
    groups: Sequence[GroupCount]
    counts: QueueStatus
    register_jobs: Sequence[register.RegisterJob]
    breaker: CircuitBreaker
    """After it saw the recent outcomes."""
    breaker_was: BreakerState
    previous: Mapping[str, Any]
    """The FaceScan's status as the tick found it."""
    written: LibraryPolicy | None = None
    """The library policy this operator last wrote (None: not yet)."""
    people_jobs: Sequence[UtilityJob] = ()
    people_counts: PeopleCounts | None = None
    """Read for the newest people Job that succeeded (not read yet: None)."""


@dataclass
class ScanPlan:
    loop: Plan
    stuck: list[tuple[Stuck, JobView, bool]]
    """Stuck Jobs to hand back and delete, each with whether its detector holds a lease."""
    registering: register.RegisterPlan
    library: LibraryPolicy | None
    """The library policy to write first (the spec changed, or the operator started)."""
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    people: people.PeoplePlan | None = None
    distances: MatchDistances | None = None
    """The library's matching distances to write (with the library policy)."""

    def lines(self) -> list[str]:
        """The plan as a person reads it."""
        return [
            *(["write the library's policy"] if self.library else []),
            *(f"hand back stuck Job {s.job}: {s.reason}" for s, _, _ in self.stuck),
            *self.loop.lines(),
            *(f"delete register Job {name}" for name in self.registering.delete),
            *(["create a register Job"] if self.registering.create else []),
            *(["create a people Job"] if self.people and self.people.create else []),
            *(f"event {kind} {reason}: {message}" for kind, reason, message in self.events),
            f"status: {self.status.get('phase')} {self.status.get('progress')}",
        ]


def decide_scan(
    spec: FaceScanSpec, calibration: CalibrationTable, seen: ScanObservation
) -> ScanPlan:
    """Pure: one tick of a FaceScan."""
    now, events = seen.now, list[Event]()
    found = stuck.find(seen.jobs, seen.refusals, now, len(spec.cascade))
    leases = {lease.owner: lease for lease in seen.leases}
    views = {job.name: job for job in seen.jobs}
    handled = {s.job for s in found}
    # what each stuck Job hands back: its lease's images, or (sent down the cascade
    # though it never claimed) the batch its detector would have claimed
    returned = {
        s.job: leases[s.job].images
        if s.job in leases
        else (views[s.job].images if s.move_down else 0)
        for s in found
    }
    holds, held = holding.update_holds(
        holding.holds_of(seen.previous),
        seen.jobs,
        found,
        returned,
        [p.name for p in spec.pools],
        now,
    )
    events += held
    moved = [
        GroupCount(views[s.job].step + 1, views[s.job].size_class, returned[s.job])
        for s in found
        if s.move_down
    ]
    jobs = [j for j in seen.jobs if j.name not in handled]
    breaker = seen.breaker
    allowed = breaker.allowed(now.timestamp())
    planned = decide(
        policy(spec, calibration),
        Observation(
            now,
            jobs,
            [lease for lease in seen.leases if lease.owner not in handled],
            seen.groups,
            allowed,
            seen.present,
            moved,
        ),
    )
    active = [j for j in jobs if not j.finished and j.name not in planned.forget]
    gated = holding.gate([(x.batch, x.pool) for x in planned.launches], holds, active, now)
    planned = replace(planned, launches=tuple(Launch(b, pool) for b, pool in gated))
    if breaker.state != seen.breaker_was and breaker.state is BreakerState.OPEN:
        events.append(("Warning", "BreakerOpen", breaker.reason))
    elif breaker.state != seen.breaker_was and breaker.state is BreakerState.CLOSED:
        events.append(("Normal", "BreakerClosed", "attempts succeed again"))

    # the library's files, registered by a Job when the FaceScan is new and then
    # every spec.library.rescanIntervalSeconds
    registering = register.decide(
        spec, seen.register_jobs, register.Registration.of(seen.previous), now
    )
    registering.create = registering.create and not spec.suspend
    events += registering.events

    counts = seen.counts
    settled = counts.pending == 0 and counts.leased == 0
    # the new faces matched to the known people, by a Job (k8s/people.py)
    peopling = people.decide(
        spec,
        seen.people_jobs,
        people.PeopleSync.of(seen.previous),
        counts.faces,
        settled,
        now,
        seen.people_counts,
    )
    events += peopling.events
    if settled:
        holds = []  # nothing left to run: nothing held back
    before_dead = ((seen.previous.get("counts") or {}).get("dead")) or 0
    if counts.dead > before_dead:
        events.append(
            (
                "Warning",
                "ImageDead",
                f"{counts.dead - before_dead} images gave up after their last attempt; "
                "see `facescan failures --dead`, requeue with `facescan requeue`",
            )
        )
    # Jobs Kueue has not admitted (created suspended, with a queue name) are not running
    queued = sum(1 for j in active if j.suspended)
    queued += len(planned.launches) if spec.kueue_queue_name else 0
    status = status_of(
        counts,
        len(active) + len(planned.launches) - queued,
        spec.suspend,
        breaker,
        planned.runnable,
        dict(seen.previous),
        now,
        holds,
        registered=registering.state.registered_at is not None
        or not spec.library.rescan_interval_seconds,
        queued_jobs=queued,
    )
    status["registration"] = registering.state.as_json()
    if spec.people.enabled or peopling.state != people.PeopleSync():
        status["people"] = peopling.state.as_json()
    library = policy_of(spec)
    write = library != seen.written
    return ScanPlan(
        planned,
        [(s, views[s.job], s.job in leases) for s in found],
        registering,
        library if write else None,
        status,
        events,
        peopling,
        spec.people.distances() if write and spec.people.enabled else None,
    )
