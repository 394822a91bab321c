"""Prometheus metrics of the operator, served on $FACESCAN_METRICS_PORT (default 8080).

Updated by the kopf handlers after each reconcile. Every series is labelled with the
FaceScan's namespace and name.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from facescan_queue.types import ErrorType

SCAN = ["namespace", "scan"]
IMAGES = Gauge("facescan_images", "Images of a FaceScan by state", [*SCAN, "state"])
FACES = Gauge("facescan_faces", "Faces found in a FaceScan's library", SCAN)
FAILING = Gauge("facescan_failing_images", "Failing images by failure type", [*SCAN, "type"])
ATTEMPTS = Counter(
    "facescan_attempts_total",
    "Detection attempts finished, by outcome (done, failed, released) and failure type",
    [*SCAN, "outcome", "type"],
)
ACTIVE_JOBS = Gauge("facescan_active_jobs", "Detector Jobs running", SCAN)
QUEUED_JOBS = Gauge("facescan_queued_jobs", "Detector Jobs waiting for Kueue's admission", SCAN)
JOBS_CREATED = Counter("facescan_jobs_created_total", "Detector Jobs created", [*SCAN, "pool"])
OOM_KILLED = Counter("facescan_oom_killed_total", "Detector pods OOMKilled", SCAN)
RECONCILE_SECONDS = Histogram("facescan_reconcile_seconds", "Duration of one reconcile", SCAN)


def record(
    namespace: str,
    scan: str,
    status: dict[str, object],
    created: list[tuple[str, str]],
    oom_killed: int,
    attempts: dict[tuple[str, str | None], int],
) -> None:
    counts = status.get("counts") or {}
    assert isinstance(counts, dict)
    for state in ("pending", "leased", "done", "degraded", "retrying", "dead", "missing"):
        IMAGES.labels(namespace, scan, state).set(counts.get(state, 0))
    FACES.labels(namespace, scan).set(counts.get("faces", 0))
    failing = counts.get("by_error_type") or {}
    for kind in ErrorType:  # a type no image fails with any more reads 0, not its last value
        FAILING.labels(namespace, scan, str(kind)).set(failing.get(str(kind), 0))
    for (outcome, error_type), n in attempts.items():
        ATTEMPTS.labels(namespace, scan, outcome, error_type or "").inc(n)
    ACTIVE_JOBS.labels(namespace, scan).set(int(str(status.get("activeJobs", 0))))
    QUEUED_JOBS.labels(namespace, scan).set(int(str(status.get("queuedJobs", 0))))
    for _, pool in created:
        JOBS_CREATED.labels(namespace, scan, pool).inc()
    if oom_killed:
        OOM_KILLED.labels(namespace, scan).inc(oom_killed)


def forget(namespace: str, scan: str) -> None:
    """Drops every series of a deleted FaceScan."""
    every = (IMAGES, FACES, FAILING, ATTEMPTS, ACTIVE_JOBS, QUEUED_JOBS, JOBS_CREATED, OOM_KILLED)
    for metric in every:
        for labels in list(metric._metrics):
            if labels[:2] == (namespace, scan):
                metric.remove(*labels)
