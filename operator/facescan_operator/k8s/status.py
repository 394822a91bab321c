"""The FaceScan's status: a phase, named conditions and counts, from what a tick observed.

Pure; called by reconcile.reconcile at the end of each tick (and re-exported there). The
handler writes only the keys ``changed`` returns, so a status that did not change is
not written, and a condition keeps its lastTransitionTime while it does not flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from facescan_operator.breaker import BreakerState, CircuitBreaker
from facescan_operator.k8s import holds as holding
from facescan_operator.k8s import observe
from facescan_operator.k8s.holds import Hold
from facescan_queue.models import QueueStatus


def _condition(
    previous: dict[str, dict[str, Any]],
    kind: str,
    on: bool,
    reason: str,
    message: str,
    now: str,
) -> dict[str, Any]:
    status = "True" if on else "False"
    before = previous.get(kind)
    since = before["lastTransitionTime"] if before and before.get("status") == status else now
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def status_of(
    counts: QueueStatus,
    active_jobs: int,
    suspended: bool,
    breaker: CircuitBreaker,
    runnable: bool,
    previous: dict[str, Any],
    now: datetime,
    holds: Sequence[Hold] = (),
    registered: bool = True,
    queued_jobs: int = 0,
) -> dict[str, Any]:
    """Pure: the FaceScan's status (phase, conditions, counts) from what was observed;
    ``holds``: where stuck Jobs hold back launching (stuck.py); ``registered``: false
    until the operator's first registration of the library's files ended (register.py),
    before which nothing is Completed; ``active_jobs`` run (or wait for a node),
    ``queued_jobs`` wait for Kueue to admit them (suspended). Missing images (their file
    gone) are left out of the progress: nothing can detect them."""
    stamp = observe.stamp(now)
    open_breaker = breaker.state is not BreakerState.CLOSED
    cause = holding.degraded((breaker.reason or "breaker open") if open_breaker else None, holds)
    jobs = active_jobs + queued_jobs
    finished = counts.pending == 0 and counts.leased == 0 and jobs == 0 and registered
    if suspended:
        phase = "Suspended"
    elif counts.images == 0 or not (registered or jobs or runnable):
        phase = "Pending"
    elif open_breaker or any(h.blocking for h in holds):
        phase = "Degraded"
    elif finished:
        phase = "Completed"
    elif jobs or runnable:
        phase = "Running"
    else:
        phase = "Waiting"  # only retries remain, backing off
    old = {c["type"]: c for c in previous.get("conditions") or ()}
    conditions = [
        _condition(
            old,
            "Ready",
            finished and not suspended,
            "AllImagesSettled" if finished else "ImagesRemaining",
            f"{counts.done} done, {counts.dead} dead of {counts.images}"
            + (f" ({counts.missing} missing)" if counts.missing else ""),
            stamp,
        ),
        _condition(
            old,
            "Progressing",
            active_jobs > 0,
            "JobsRunning" if active_jobs else "NoJobs",
            f"{active_jobs} detector Jobs running"
            + (f", {queued_jobs} waiting for Kueue to admit them" if queued_jobs else ""),
            stamp,
        ),
        _condition(
            old,
            "Degraded",
            cause is not None,
            cause[0] if cause else "Healthy",
            cause[1] if cause else "failures are the images' own",
            stamp,
        ),
        _condition(
            old,
            "Suspended",
            suspended,
            "SpecSuspend" if suspended else "Active",
            "spec.suspend is set" if suspended else "creating Jobs as needed",
            stamp,
        ),
    ]
    return {
        "phase": phase,
        "progress": f"{counts.done}/{counts.images - counts.missing}",
        "counts": counts.as_json(),
        "activeJobs": active_jobs,
        "queuedJobs": queued_jobs,
        "breaker": str(breaker.state),
        "conditions": conditions,
        "holds": [h.as_json() for h in holds],
    }


def changed(current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose value differs (what to patch)."""
    return {k: v for k, v in new.items() if current.get(k) != v}


def with_generation(status: dict[str, Any], generation: int | None) -> dict[str, Any]:
    """Pure: the status marked with the spec generation it was computed from
    (``observedGeneration`` on the status and on each condition), as `kubectl wait` and
    GitOps tools read it."""
    if generation is None:
        return status
    conditions = [c | {"observedGeneration": generation} for c in status.get("conditions") or ()]
    return status | {"observedGeneration": generation, "conditions": conditions}


def unreachable(
    previous: dict[str, Any], reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """Pure: the status of a FaceScan whose database cannot be reached (or whose Secret
    cannot be read): phase Degraded, the Degraded condition with the reason, the other
    conditions and the counts as they were."""
    stamp = observe.stamp(now)
    old = {c["type"]: c for c in previous.get("conditions") or ()}
    degraded = _condition(old, "Degraded", True, reason, message, stamp)
    kept = [c for c in previous.get("conditions") or () if c.get("type") != "Degraded"]
    return {"phase": "Degraded", "conditions": [*kept, degraded]}
