"""Workers as either runner sees them, and how an ended one is settled: the operator
(Jobs and pods, k8s/observe.py) and `facescan scan` (detector subprocesses, workers.py)
both see their workers as :class:`WorkerView`; loop.decide calls :func:`settle` and
:func:`unclaimed` on them. No I/O.

The lease rule: a worker is launched for an assignment (library, cascade step, size
class, batch size) and its detector claims its batch when it starts, so nothing is
leased while a worker waits to run; until its lease exists, the images it will claim
are spoken for (:func:`unclaimed`).

The settlement rule: a worker that ended with its lease still held hands it back here.
Killed for memory: the image it had started is charged ``oom`` (it moves to the next
cascade step); disrupted (preempted, evicted, its node gone): nothing is charged; any
other end: the image in progress is charged ``crash``. The rest of the batch goes back
untouched. A lease whose worker is gone altogether is charged ``crash`` after
``VANISHED_GRACE``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from facescan_operator.sizing import MIB
from facescan_queue.models import GroupCount, LeaseInfo
from facescan_queue.types import ErrorType

VANISHED_GRACE = timedelta(seconds=60)
DETECTOR_CANNOT_START = 2
"""`facescan-detector run`'s exit status when it cannot start (settings, model files):
never an image's fault, and a worker started the same way fails the same way."""


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ [A-Z]+ [\w.]+: ")
"""The detector's log line prefix (time, level, logger), left out of a message."""


def last_words(log: str, limit: int = 300) -> str:
    """The last line of a detector's log, without its prefix: why it ended."""
    lines = [line for line in log.splitlines() if line.strip()]
    return _LOG_PREFIX.sub("", lines[-1])[-limit:] if lines else ""


class WorkerOutcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    OOM_KILLED = "oom-killed"
    DISRUPTED = "disrupted"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkerView:
    """A detector worker as either runner sees it: a Job, or a local subprocess."""

    name: str
    """Also the owner of its lease."""
    step: int
    size_class: int
    pool: str
    memory_bytes: int
    outcome: WorkerOutcome
    detail: str
    """How it ended, in the runner's words ('OOMKilled', 'exit code 1: ...')."""
    finished_at: datetime | None
    images: int = 0
    """The most images its detector claims when it starts (its batch)."""

    @property
    def finished(self) -> bool:
        return self.outcome is not WorkerOutcome.RUNNING


@dataclass(frozen=True)
class Release:
    owner: str
    charge: ErrorType | None
    reason: str
    oom: bool = False


@dataclass(frozen=True)
class Settlement:
    releases: list[Release]
    forget: list[str]
    """Ended workers with nothing left to settle, kept at least ``keep`` (Jobs are
    deleted, subprocesses forgotten)."""


def settle(
    workers: Sequence[WorkerView],
    leases: Sequence[LeaseInfo],
    now: datetime,
    keep: timedelta,
    present: Collection[str] = (),
) -> Settlement:
    """Which leases to end (and how to charge them) and which ended workers to forget.
    ``leases``: the leases of this runner's workers only. ``present``: workers that
    still run somewhere though the runner lost them (a Job deleted while its pod hands
    its image back): their leases are not vanished."""
    leased = {lease.owner: lease for lease in leases}
    known = {worker.name for worker in workers}
    releases, forget = [], []
    for worker in workers:
        if not worker.finished:
            continue
        if worker.name in leased:
            releases.append(_release(worker))
        elif worker.finished_at is None or now - worker.finished_at >= keep:
            forget.append(worker.name)
    for owner, lease in leased.items():
        vanished = owner not in known and owner not in present
        if vanished and now - lease.claimed_at >= VANISHED_GRACE:
            gone = "its worker vanished (deleted, or its node is gone)"
            releases.append(Release(owner, ErrorType.CRASH, gone))
    return Settlement(releases, forget)


def _release(worker: WorkerView) -> Release:
    if worker.outcome is WorkerOutcome.OOM_KILLED:
        limit = worker.memory_bytes // MIB
        reason = f"killed for memory ({worker.detail}) at its {limit} MiB limit"
        return Release(worker.name, ErrorType.OOM, reason, oom=True)
    if worker.outcome is WorkerOutcome.DISRUPTED:
        return Release(worker.name, None, worker.detail)
    reason = f"detector ended ({worker.detail}) with the image in progress"
    return Release(worker.name, ErrorType.CRASH, reason)


def unclaimed(
    groups: Sequence[GroupCount], active: Sequence[WorkerView], leased: Collection[str]
) -> list[GroupCount]:
    """The runnable groups less the batches of active workers whose detector has not
    claimed its own yet (waiting for Kueue, a node, an image pull, or just starting):
    those images are spoken for, and a new worker for them would find nothing."""
    waiting: dict[tuple[int, int], int] = {}
    for worker in active:
        if worker.name not in leased and not worker.finished:
            key = (worker.step, worker.size_class)
            waiting[key] = waiting.get(key, 0) + worker.images
    left = [
        GroupCount(g.step, g.size_class, g.runnable - waiting.get((g.step, g.size_class), 0))
        for g in groups
    ]
    return [g for g in left if g.runnable > 0]
