"""A FaceScan's utility Jobs: a `facescan` command in the detector image (register.py:
`facescan register`; people.py: `facescan people sync`), seen and built alike.

Each runs with the database URL from the FaceScan's Secret, the detector pods' restricted
security, on the first pool without GPUs (it needs none), and is deleted by the operator
once it has read how it ended (its own TTL is an hour longer: the backstop for an
operator gone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from facescan_operator.k8s.jobs import (
    LABEL_COMPONENT,
    ScanRef,
    detector_security,
    owner_reference,
    placement,
    scan_labels,
)
from facescan_operator.k8s.observe import job_end, parse_time
from facescan_operator.k8s.spec import FaceScanSpec, NodePool


@dataclass(frozen=True)
class UtilityJob:
    """A utility Job as the API server lists it."""

    name: str
    created_at: datetime | None
    finished_at: datetime | None = None
    succeeded: bool | None = None
    """None while it runs."""


S = TypeVar("S")


@dataclass
class UtilityPlan(Generic[S]):
    """One tick's decision about one kind of utility Job: what the status keeps of them
    (``state``), whether to start one, which ended ones to delete, the Events."""

    state: S
    create: bool = False
    delete: list[str] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def ended(jobs: Sequence[UtilityJob], last_read: str | None) -> tuple[list[str], list[UtilityJob]]:
    """The ended Jobs (all to delete) and those of them not read yet (all but the one
    the status says was read last, whose deletion may still be in flight), oldest first."""
    done = [job for job in jobs if job.succeeded is not None]
    return [job.name for job in done], [job for job in done if job.name != last_read]


def view(jobs: Sequence[Mapping[str, Any]]) -> list[UtilityJob]:
    """The Jobs, oldest first."""
    views = []
    for job in jobs:
        meta, end = job.get("metadata") or {}, job_end(job)
        views.append(
            UtilityJob(
                meta["name"],
                parse_time(meta.get("creationTimestamp")),
                end.at if end else None,
                end.succeeded if end else None,
            )
        )
    return sorted(views, key=lambda j: (j.created_at is None, j.created_at or datetime.min))


def component_labels(scan: ScanRef, component: str) -> dict[str, str]:
    """The labels of one kind of the FaceScan's Jobs (reconcile tells them apart by them)."""
    return {**scan_labels(scan), LABEL_COMPONENT: component}


def utility_job(
    scan: ScanRef,
    spec: FaceScanSpec,
    name: str,
    component: str,
    args: list[str],
    *,
    resources: dict[str, Any],
    deadline_s: int,
    library_volume: bool,
) -> dict[str, Any]:
    """The Job running `facescan ARGS`; ``library_volume``: the library mounted read-only."""
    labels = component_labels(scan, component)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    if library_volume:
        library = {"name": "library", "mountPath": spec.library.mount_path, "readOnly": True}
        mounts.insert(0, library)
        volumes.insert(0, {"name": "library", **spec.library.volume})
    secret = {"name": spec.database.secret_name, "key": spec.database.key}
    container: dict[str, Any] = {
        "name": component,
        "image": spec.detector.image,
        "imagePullPolicy": spec.detector.image_pull_policy,
        "command": ["facescan"],
        "args": args,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [
            {"name": "FACESCAN_DSN", "valueFrom": {"secretKeyRef": secret}},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": resources,
        "volumeMounts": mounts,
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
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished + 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod,
                    "containers": [container],
                    **placement(cpu_pool(spec)),
                    "volumes": volumes,
                },
            },
        },
    }


def cpu_pool(spec: FaceScanSpec) -> NodePool:
    """Where a utility Job runs: the first pool without GPUs, else the first pool."""
    return next((pool for pool in spec.pools if not pool.is_gpu), spec.pools[0])
