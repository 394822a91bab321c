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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from facescan_operator.k8s.jobs import (
    LABEL_COMPONENT,
    ScanRef,
    detector_security,
    job_name,
    owner_reference,
    placement,
    scan_labels,
)
from facescan_operator.k8s.observe import job_end, parse_time, stamp
from facescan_operator.k8s.spec import FaceScanSpec, NodePool

COMPONENT = "register"
RETRY_AFTER = timedelta(minutes=5)
"""A failed registration is tried again this long after (or the interval, if shorter)."""
DEADLINE_S = 6 * 3600
"""A register Job that runs longer (a hung mount) is ended by Kubernetes."""


def register_labels(scan: ScanRef) -> dict[str, str]:
    """The labels of the FaceScan's register Jobs (reconcile tells them apart by component)."""
    return {**scan_labels(scan), LABEL_COMPONENT: COMPONENT}


@dataclass(frozen=True)
class RegisterJob:
    """A register Job as the API server lists it."""

    name: str
    created_at: datetime | None
    finished_at: datetime | None = None
    succeeded: bool | None = None
    """None while it runs."""


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


@dataclass
class RegisterPlan:
    registration: Registration
    create: bool = False
    delete: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def view(jobs: Sequence[Mapping[str, Any]]) -> list[RegisterJob]:
    """The register Jobs, oldest first."""
    views = []
    for job in jobs:
        meta, end = job.get("metadata") or {}, job_end(job)
        views.append(
            RegisterJob(
                meta["name"],
                parse_time(meta.get("creationTimestamp")),
                end.at if end else None,
                end.succeeded if end else None,
            )
        )
    return sorted(views, key=lambda j: (j.created_at is None, j.created_at or datetime.min))


def decide(
    spec: FaceScanSpec, jobs: Sequence[RegisterJob], previous: Registration, now: datetime
) -> RegisterPlan:
    """Pure: read the register Jobs that ended (once each), delete them, and whether to
    start one now."""
    interval = spec.library.rescan_interval_seconds
    plan = RegisterPlan(previous)
    kept = previous
    for job in jobs:
        if job.succeeded is None:
            continue
        plan.delete.append(job.name)
        if job.name == kept.last_job:
            continue
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
    plan.registration = kept
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
    labels = register_labels(scan)
    library = spec.library_name(scan.namespace, scan.name)
    container: dict[str, Any] = {
        "name": "register",
        "image": spec.detector.image,
        "imagePullPolicy": spec.detector.image_pull_policy,
        "command": ["facescan"],
        "args": ["register", spec.library.mount_path, "--library", library, "--json"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [
            {
                "name": "FACESCAN_DSN",
                "valueFrom": {
                    "secretKeyRef": {"name": spec.database.secret_name, "key": spec.database.key}
                },
            },
            {"name": "HOME", "value": "/tmp"},
        ],
        # header reads only; a library of millions of paths is held in memory once
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "volumeMounts": [
            {"name": "library", "mountPath": spec.library.mount_path, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod, container["securityContext"] = detector_security()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": scan.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(scan)],
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": DEADLINE_S,
            # the operator deletes it once read; this is the backstop for an operator gone
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished + 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod,
                    "containers": [container],
                    **placement(_cpu_pool(spec)),
                    "volumes": [
                        {"name": "library", **spec.library.volume},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def _cpu_pool(spec: FaceScanSpec) -> NodePool:
    """Where a register Job runs: the first pool without GPUs (it needs none), else the
    first pool."""
    return next((pool for pool in spec.pools if not pool.is_gpu), spec.pools[0])


def register_job_name(scan_name: str) -> str:
    return job_name(scan_name, f"register-{secrets.token_hex(3)}")


def _stamp(when: datetime | None) -> str | None:
    return stamp(when) if when is not None else None
