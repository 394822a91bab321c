"""Prometheus metrics of the operator, served on --metrics-port (default 8080).

Updated by the kopf handlers after each reconcile.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IMAGES = Gauge("facescan_images", "Images of a FaceScan by state", ["scan", "state"])
FACES = Gauge("facescan_faces", "Faces found in a FaceScan's library", ["scan"])
FAILING = Gauge("facescan_failing_images", "Failing images by failure type", ["scan", "type"])
ACTIVE_JOBS = Gauge("facescan_active_jobs", "Detector Jobs running", ["scan"])
JOBS_CREATED = Counter("facescan_jobs_created_total", "Detector Jobs created", ["scan", "pool"])
OOM_KILLED = Counter("facescan_oom_killed_total", "Detector pods OOMKilled", ["scan"])
RECONCILE_SECONDS = Histogram("facescan_reconcile_seconds", "Duration of one reconcile", ["scan"])


def record(
    scan: str, status: dict[str, object], created: list[tuple[str, str]], oom_killed: int
) -> None:
    counts = status.get("counts") or {}
    assert isinstance(counts, dict)
    for state in ("pending", "leased", "done", "degraded", "retrying", "dead"):
        IMAGES.labels(scan, state).set(counts.get(state, 0))
    FACES.labels(scan).set(counts.get("faces", 0))
    for kind, n in (counts.get("by_error_type") or {}).items():
        FAILING.labels(scan, kind).set(n)
    ACTIVE_JOBS.labels(scan).set(int(str(status.get("activeJobs", 0))))
    for _, pool in created:
        JOBS_CREATED.labels(scan, pool).inc()
    if oom_killed:
        OOM_KILLED.labels(scan).inc(oom_killed)
