"""A FaceScan's people: the people Jobs that match its new faces to the library's known
people, decided and built.

With ``spec.people.enabled``, the operator runs `facescan people sync` (with
``spec.people.cluster``, `--cluster`: then the faces nobody has are grouped into unnamed
people) in a Job of the detector image (utility_jobs.py; the operator image stays light)
whenever the library has faces the last sync did not see: once detection settles, and every
``spec.people.syncIntervalSeconds`` while it runs. A sync is loss-free (a batch of faces
per transaction), so a Job killed mid-way costs only its next run's time. `decide` is
pure; the status keeps what it needs between ticks (``status.people``), with the
library's counts of people and faces by assignment, read once per Job that succeeded.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from facescan_operator.k8s.jobs import ScanRef, job_name
from facescan_operator.k8s.observe import parse_time, stamp
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.utility_jobs import UtilityJob, UtilityPlan, ended, utility_job
from facescan_queue.models import PeopleCounts

COMPONENT = "people"
RETRY_AFTER = timedelta(minutes=5)
"""A failed sync is tried again this long after."""
DEADLINE_S = 6 * 3600


@dataclass(frozen=True)
class PeopleSync:
    """What the status keeps of the people Jobs."""

    synced_faces: int | None = None
    """The library's faces when the last successful sync started."""
    synced_at: datetime | None = None
    last_job: str | None = None
    """The last people Job read (its end is not read twice)."""
    started_faces: int | None = None
    """The library's faces when the newest people Job was created."""
    failed_at: datetime | None = None
    counts: PeopleCounts | None = None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> PeopleSync:
        kept = status.get("people") or {}
        counts = None
        if "people" in kept:
            counts = PeopleCounts(
                kept.get("people", 0),
                kept.get("assigned", 0),
                kept.get("pending", 0),
                kept.get("unassigned", 0),
            )
        return cls(
            kept.get("syncedFaces"),
            parse_time(kept.get("syncedAt")),
            kept.get("lastJob"),
            kept.get("startedFaces"),
            parse_time(kept.get("failedAt")),
            counts,
        )

    def as_json(self) -> dict[str, Any]:
        kept: dict[str, Any] = {
            "syncedFaces": self.synced_faces,
            "syncedAt": stamp(self.synced_at) if self.synced_at else None,
            "lastJob": self.last_job,
            "startedFaces": self.started_faces,
            "failedAt": stamp(self.failed_at) if self.failed_at else None,
        }
        if self.counts is not None:
            c = self.counts
            kept |= {
                "people": c.people,
                "assigned": c.assigned,
                "pending": c.pending,
                "unassigned": c.unassigned,
            }
        return kept


PeoplePlan = UtilityPlan[PeopleSync]


def decide(
    spec: FaceScanSpec,
    jobs: Sequence[UtilityJob],
    previous: PeopleSync,
    faces: int,
    settled: bool,
    now: datetime,
    counts: PeopleCounts | None = None,
) -> PeoplePlan:
    """Pure: read the people Jobs that ended (once each), delete them, and whether to
    start one now. ``faces``: the library's faces now; ``settled``: detection has
    nothing pending or leased; ``counts``: read for the newest Job that succeeded."""
    plan = PeoplePlan(previous)
    state = previous
    plan.delete, unread = ended(jobs, previous.last_job)
    for job in unread:
        if job.succeeded:
            when = job.finished_at or now
            state = replace(
                state,
                synced_faces=state.started_faces,
                synced_at=when,
                last_job=job.name,
                failed_at=None,
                counts=counts or state.counts,
            )
            c = state.counts or PeopleCounts()
            plan.events.append(
                (
                    "Normal",
                    "PeopleSynced",
                    f"Job {job.name}: new faces matched to the known people ({c.people} "
                    f"people; faces {c.assigned} assigned, {c.pending} pending, "
                    f"{c.unassigned} unassigned)",
                )
            )
        else:
            state = replace(state, last_job=job.name, failed_at=job.finished_at or now)
            plan.events.append(
                (
                    "Warning",
                    "PeopleSyncFailed",
                    f"Job {job.name} could not match the new faces (see its pod's log); "
                    f"trying again in {int(RETRY_AFTER.total_seconds())} s",
                )
            )
    plan.state = state
    if not spec.people.enabled or spec.suspend or any(j.succeeded is None for j in jobs):
        return plan
    if faces == state.synced_faces or faces == 0:
        return plan  # nothing new since the last sync
    if state.failed_at is not None and now < state.failed_at + RETRY_AFTER:
        return plan
    interval = timedelta(seconds=spec.people.sync_interval_seconds)
    if settled or state.synced_at is None or now - state.synced_at >= interval:
        plan.create = True
        plan.state = replace(state, started_faces=faces)
    return plan


def build_people_job(scan: ScanRef, spec: FaceScanSpec, name: str) -> dict[str, Any]:
    """`facescan people sync` of the library (and `--cluster`), in the detector image (no
    volume: the faces are in the database)."""
    library = spec.library_name(scan.namespace, scan.name)
    cluster = ["--cluster"] if spec.people.cluster else []
    return utility_job(
        scan,
        spec,
        name,
        COMPONENT,
        ["people", "sync", "--library", library, *cluster, "--json"],
        resources={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        deadline_s=DEADLINE_S,
        library_volume=False,
    )


def people_job_name(scan_name: str) -> str:
    return job_name(scan_name, f"people-{secrets.token_hex(3)}")
