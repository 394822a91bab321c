"""A FaceScan finds its own files: the register Jobs of a FaceScan, decided and built.

Called by reconcile once a tick. When a FaceScan is created and then every
``spec.library.rescanIntervalSeconds`` (0: never; register yourself with `facescan
register` or `import-legacy`), the operator runs `facescan register` in a Job of the
detector image with the library mounted read-only (header reads only, no detection), so
that `kubectl apply` of a FaceScan alone scans a library. `decide` is pure; the status
keeps what it needs between ticks (``status.registration``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from facescan_operator.k8s.jobs import ScanRef, job_name
from facescan_operator.k8s.observe import parse_time, stamp
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.utility_jobs import (
    UtilityJob,
    UtilityPlan,
    component_labels,
    ended,
    utility_job,
)
from facescan_operator.k8s.utility_jobs import view as view

COMPONENT = "register"
RETRY_AFTER = timedelta(minutes=5)
"""A failed registration is tried again this long after (or the interval, if shorter)."""
DEADLINE_S = 6 * 3600
"""A register Job that runs longer (a hung mount) is ended by Kubernetes."""


def register_labels(scan: ScanRef) -> dict[str, str]:
    """The labels of the FaceScan's register Jobs (reconcile tells them apart by component)."""
    return component_labels(scan, COMPONENT)


RegisterJob = UtilityJob
"""A register Job as the API server lists it."""


@dataclass(frozen=True)
class Registration:
    """What the status keeps: the last successful registration and the last Job read."""

    registered_at: datetime | None = None
    last_job: str | None = None
    failed_at: datetime | None = None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> Registration:
        kept = status.get("registration") or {}
        return cls(
            parse_time(kept.get("registeredAt")),
            kept.get("lastJob"),
            parse_time(kept.get("failedAt")),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "registeredAt": _stamp(self.registered_at),
            "lastJob": self.last_job,
            "failedAt": _stamp(self.failed_at),
        }


RegisterPlan = UtilityPlan[Registration]


def decide(
    spec: FaceScanSpec, jobs: Sequence[RegisterJob], previous: Registration, now: datetime
) -> RegisterPlan:
    """Pure: read the register Jobs that ended (once each), delete them, and whether to
    start one now."""
    interval = spec.library.rescan_interval_seconds
    plan = RegisterPlan(previous)
    kept = previous
    plan.delete, unread = ended(jobs, previous.last_job)
    for job in unread:
        when = job.finished_at or now
        if job.succeeded:
            kept = Registration(when, job.name, None)
            plan.events.append(("Normal", "LibraryRegistered", f"Job {job.name}: files registered"))
        else:
            kept = Registration(kept.registered_at, job.name, when)
            retry = min(RETRY_AFTER, timedelta(seconds=interval)) if interval else RETRY_AFTER
            plan.events.append(
                (
                    "Warning",
                    "RegisterFailed",
                    f"Job {job.name} could not register the library's files (see its pod's "
                    f"log); trying again in {int(retry.total_seconds())} s",
                )
            )
    plan.state = kept
    if not interval or any(job.succeeded is None for job in jobs):
        return plan
    if kept.failed_at is not None and (
        kept.registered_at is None or kept.failed_at > kept.registered_at
    ):
        due = kept.failed_at + min(RETRY_AFTER, timedelta(seconds=interval))
    elif kept.registered_at is not None:
        due = kept.registered_at + timedelta(seconds=interval)
    else:
        due = now  # never registered: at once
    plan.create = now >= due
    return plan


def build_register_job(scan: ScanRef, spec: FaceScanSpec, name: str) -> dict[str, Any]:
    """`facescan register` of the library, in the detector image, the library read-only."""
    library = spec.library_name(scan.namespace, scan.name)
    return utility_job(
        scan,
        spec,
        name,
        COMPONENT,
        ["register", spec.library.mount_path, "--library", library, "--json"],
        # header reads only; a library of millions of paths is held in memory once
        resources={"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        deadline_s=DEADLINE_S,
        library_volume=True,
    )


def register_job_name(scan_name: str) -> str:
    return job_name(scan_name, f"register-{secrets.token_hex(3)}")


def _stamp(when: datetime | None) -> str | None:
    return stamp(when) if when is not None else None
