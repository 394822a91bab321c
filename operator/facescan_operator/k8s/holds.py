"""Where launching is held back after stuck Jobs (stuck.py), and the Degraded condition.

Pure: ``update_holds`` says where launching is held back after this tick's stuck Jobs
and which Events to emit, ``gate`` drops the planned batches a hold keeps back, and
``degraded`` gives the FaceScan's Degraded condition. Holds live in the FaceScan's
``status.holds``; stuck.py's docstring tells when a hold starts, backs off and ends.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from facescan_operator.k8s.observe import JobView, stamp
from facescan_operator.planner import BatchPlan

RETRY_BACKOFF = timedelta(seconds=60)
RETRY_BACKOFF_CAP = timedelta(seconds=300)
ALL_POOLS = "*"
EVENT_STUCK = "PodsCannotStart"
EVENT_MOVED_DOWN = "BatchTooLargeForNodes"
EVENT_RECOVERED = "PodsStartAgain"
BREAKER_OPEN = "BreakerOpen"
DETECTOR_CANNOT_START = "DetectorCannotStart"
"""A Job's detector exited saying it cannot start (settings, model files): its pool is
held, and its hold ends only when a later Job of the pool ends otherwise."""


@dataclass(frozen=True)
class Stuck:
    """A Job whose pods cannot be created or run, and what to do with its batch."""

    job: str
    pool: str
    reason: str
    message: str
    scope: str
    """The pool whose launches it holds back, or ALL_POOLS."""
    move_down: bool = False
    """Its images go to the next cascade step (no node has the memory this one needs)."""


@dataclass(frozen=True)
class Hold:
    """Where launching is held back (or, not blocking, a batch moved down) and why."""

    pool: str
    reason: str
    message: str
    job: str
    at: datetime
    """The latest refusal: a Job of the scope that starts later ends the hold."""
    retry_at: datetime
    retries: int = 0
    blocking: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "reason": self.reason,
            "message": self.message,
            "job": self.job,
            "at": stamp(self.at),
            "retryAt": stamp(self.retry_at),
            "retries": self.retries,
            "blocking": self.blocking,
        }

    def describe(self) -> str:
        where = "" if self.pool == ALL_POOLS else f", pool {self.pool}"
        if not self.blocking:
            return f"{self.message} (Job {self.job}{where}: its images moved down the cascade)"
        return f"{self.message} (Job {self.job}{where}; next try from {stamp(self.retry_at)})"


def holds_of(status: Mapping[str, Any]) -> list[Hold]:
    """The holds kept in a FaceScan's status (entries that do not parse are dropped)."""
    holds = []
    for entry in status.get("holds") or ():
        try:
            holds.append(
                Hold(
                    str(entry["pool"]),
                    str(entry["reason"]),
                    str(entry["message"]),
                    str(entry["job"]),
                    datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00")),
                    datetime.fromisoformat(str(entry["retryAt"]).replace("Z", "+00:00")),
                    int(entry.get("retries", 0)),
                    bool(entry.get("blocking", True)),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return holds


def _proves_over(hold: Hold, job: JobView) -> bool:
    """A Job of the hold's scope started after its latest refusal: pods can run again.
    A detector that could not start also ran: for that cause, the Job must have ended
    otherwise (done, or failed on an image)."""
    if hold.pool not in (ALL_POOLS, job.pool) or job.started_at is None:
        return False
    if job.started_at < hold.at:
        return False
    return hold.reason != DETECTOR_CANNOT_START or (job.finished and not job.cannot_start)


def _backoff(retries: int) -> timedelta:
    return min(RETRY_BACKOFF * (1 << min(retries, 16)), RETRY_BACKOFF_CAP)


def update_holds(
    holds: Sequence[Hold],
    jobs: Sequence[JobView],
    stuck: Sequence[Stuck],
    returned: Mapping[str, int],
    pools: Collection[str],
    now: datetime,
) -> tuple[list[Hold], list[tuple[str, str, str]]]:
    """Pure: the holds after this tick and the Events to emit. ``returned`` maps each stuck
    Job handled in this tick to the images it handed back (none if it never started)."""
    events: list[tuple[str, str, str]] = []
    kept: dict[str, Hold] = {}
    for hold in holds:
        if hold.pool != ALL_POOLS and hold.pool not in pools:
            continue  # the pool left the spec
        ran = next((j for j in jobs if _proves_over(hold, j)), None)
        if ran is None:
            kept[hold.pool] = hold
        elif hold.blocking:
            events.append(
                (
                    "Normal",
                    EVENT_RECOVERED,
                    f"Job {ran.name} runs on pool {ran.pool}: {hold.reason} is over",
                )
            )
    earlier = dict(kept)  # several Jobs refused in one tick back off once
    for s in stuck:
        if s.job not in returned:
            continue  # handled in an earlier tick
        before = earlier.get(s.scope)
        if s.move_down:
            if s.scope not in kept or not kept[s.scope].blocking:
                kept[s.scope] = Hold(s.scope, s.reason, s.message, s.job, now, now, 0, False)
            events.append(
                (
                    "Warning",
                    EVENT_MOVED_DOWN,
                    f"Job {s.job}: {s.reason}: {s.message}; deleted, its "
                    f"{returned[s.job]} images move to the next cascade step",
                )
            )
            continue
        retries = before.retries + 1 if before is not None and before.blocking else 0
        hold = Hold(s.scope, s.reason, s.message, s.job, now, now + _backoff(retries), retries)
        kept[s.scope] = hold
        where = "in this FaceScan" if s.scope == ALL_POOLS else f"on pool {s.scope}"
        images = (
            f"{returned[s.job]} images back in the queue uncharged"
            if returned[s.job]
            else "nothing ran, its images stay in the queue uncharged"
        )
        events.append(
            (
                "Warning",
                EVENT_STUCK,
                f"Job {s.job}: {s.reason}: {s.message}; deleted, {images}; no new Jobs "
                f"{where} until {stamp(hold.retry_at)}",
            )
        )
    return list(kept.values()), events


def gate(
    chosen: Sequence[tuple[BatchPlan, str]],
    holds: Sequence[Hold],
    active: Sequence[JobView],
    now: datetime,
) -> list[tuple[BatchPlan, str]]:
    """Pure: the planned batches the holds let through: none in a held scope before its
    retry time, then one Job at a time there (while none of the scope is active)."""
    blocking = [h for h in holds if h.blocking]
    busy = {j.pool for j in active}
    tried: set[str] = set()
    kept = []
    for batch, pool in chosen:
        over = {h.pool for h in blocking if h.pool in (pool, ALL_POOLS)}
        if any(now < h.retry_at for h in blocking if h.pool in over):
            continue
        if over & tried or any(busy if s == ALL_POOLS else s in busy for s in over):
            continue
        tried |= over
        kept.append((batch, pool))
    return kept


def degraded(breaker_reason: str | None, holds: Sequence[Hold]) -> tuple[str, str] | None:
    """Pure: (reason, message) of the Degraded condition, the most important cause first
    (the others' reasons named after it); None when healthy."""
    causes = [(h.reason, h.describe()) for h in holds if h.blocking and h.pool == ALL_POOLS]
    if breaker_reason is not None:
        causes.append((BREAKER_OPEN, breaker_reason))
    causes += [(h.reason, h.describe()) for h in holds if h.blocking and h.pool != ALL_POOLS]
    causes += [(h.reason, h.describe()) for h in holds if not h.blocking]
    if not causes:
        return None
    (reason, message), rest = causes[0], causes[1:]
    if rest:
        message += f" (also: {', '.join(r for r, _ in rest)})"
    return reason, message
