"""The local runner's workers: `facescan-detector run` subprocesses under a memory limit
(memlimit.py), seen by the loop as :class:`settlement.WorkerView` as the operator sees Jobs.

A worker is started for an assignment (library, cascade step, size class, batch size)
and its detector claims its own batch when it starts, as a Job's does. Its log goes to a
file in the run's log folder, read back for the reason a worker ended.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from facescan_operator.memlimit import Slot
from facescan_operator.planner import BatchPlan
from facescan_operator.settlement import (
    DETECTOR_CANNOT_START,
    WorkerOutcome,
    WorkerView,
    last_words,
)
from facescan_operator.sizing import MIB

DETECTOR_UNAVAILABLE = 75
"""`facescan-detector run` exit status: database or library down (the breaker's concern)."""
DETECTOR_ON_AN_IMAGE = frozenset({3, 4})
"""`facescan-detector run` exit statuses after an image timed out or exhausted the host's
memory: it had started an image, and handed its lease back."""
LOGS_PREFIX = "facescan-workers-"
"""The workers' log folder of a run: <tmp>/facescan-workers-<pid of the run>-<random>."""
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Assignment:
    """What a worker is started for: its detector claims the batch itself."""

    owner: str
    library: str
    root: Path
    batch: BatchPlan


@dataclass
class Worker:
    assignment: Assignment
    process: subprocess.Popen[bytes]
    slot: Slot
    log_path: Path

    @property
    def owner(self) -> str:
        return self.assignment.owner

    @property
    def library(self) -> str:
        return self.assignment.library

    @property
    def batch(self) -> BatchPlan:
        return self.assignment.batch

    @property
    def memory(self) -> int:
        """The memory it was planned with (what it counts against a memory budget)."""
        return self.batch.memory_bytes

    def view(self, now: datetime | None = None) -> WorkerView:
        """The worker as the loop sees it; an ended one says how it ended."""
        code = self.process.poll()
        outcome, detail = WorkerOutcome.RUNNING, ""
        if code is not None and self.slot.oom_killed():
            outcome, detail = WorkerOutcome.OOM_KILLED, f"{self.batch.model}@{self.batch.scale:g}"
        elif code == 0:
            outcome, detail = WorkerOutcome.SUCCEEDED, "exit code 0"
        elif code is not None:
            how = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            outcome, detail = WorkerOutcome.FAILED, f"{how}: {self.last_line()}"
        b = self.batch
        ended = None if code is None else (now or datetime.now(UTC))
        return WorkerView(
            self.owner, b.step, b.size_class, "local", self.slot.limit_bytes, outcome, detail,
            ended, b.limit,
        )  # fmt: skip

    def last_line(self) -> str:
        """The last line of its log, without the log prefix."""
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            log = ""
        return last_words(log) or "no output"


def start(
    assignment: Assignment,
    command: Sequence[str],
    env: dict[str, str],
    slot: Slot,
    logs: Path,
) -> Worker:
    """Starts the detector for ``assignment`` under ``slot``'s memory limit; it gets
    SIGTERM when this process dies."""
    b = assignment.batch
    claim = {
        "FACESCAN_LIBRARY": assignment.library,
        "FACESCAN_STEP": str(b.step),
        "FACESCAN_SIZE_CLASS": str(b.size_class),
        "FACESCAN_BATCH_SIZE": str(b.limit),
    }
    log_path = logs / f"{assignment.owner}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env={**env, **claim},
            preexec_fn=_ended_with_this_process(slot.preexec()),
            start_new_session=True,
        )
    return Worker(assignment, process, slot, log_path)


def threads_each(count: int) -> int:
    """Each of ``count`` workers' share of this process's CPUs (HOG takes two when it may)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // count)


def sweep_logs_of_dead_runs() -> None:
    """Removes this user's log folders of runs killed (SIGKILL) before they could."""
    for folder in Path(tempfile.gettempdir()).glob(f"{LOGS_PREFIX}*-*"):
        pid = folder.name.removeprefix(LOGS_PREFIX).split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # gone meanwhile, or another user's live process


def _ended_with_this_process(preexec: Callable[[], None]) -> Callable[[], None]:
    """``preexec``, and on Linux SIGTERM to the detector when this process dies, even by
    SIGKILL: it hands its lease back and exits, instead of working on for nobody."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return preexec

    def run() -> None:
        preexec()
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return run


def default_detector() -> Sequence[str]:
    beside = Path(sys.executable).with_name("facescan-detector")
    if beside.exists():
        return (str(beside),)
    return (sys.executable, "-m", "facescan_detector.cli")


class DetectorsCannotRun(Exception):
    """The run cannot make progress: its detectors cannot start, or it has started the
    most detector processes it may (``LocalOptions.max_processes``)."""


class Startup:
    """Whether a run's detectors can start at all: it ends the run (DetectorsCannotRun)
    at a detector that says it cannot start, or after ``budget`` in a row died before
    starting any image."""

    def __init__(self, budget: int, memory_limit: int | None) -> None:
        self.budget, self.memory_limit = budget, memory_limit
        self.failures = 0
        """Detectors in a row that died before starting any image."""

    def judge(self, code: int, charged: bool, oom_at: str | None, last: str) -> None:
        """An ended worker: its exit status, whether an image in progress was charged,
        the memory limit it was killed at (if killed for memory) and its last log line.
        It started no image if it ended before claiming (no lease) or with its lease held
        and no image in progress (so killed loading its model, say), unless its exit
        status says an image ended it."""
        if code == DETECTOR_CANNOT_START:
            raise DetectorsCannotRun(f"the detector cannot start: {last}")
        if code in (0, DETECTOR_UNAVAILABLE, *DETECTOR_ON_AN_IMAGE) or charged:
            self.failures = 0
            return
        self.failures += 1
        if self.failures < self.budget:
            return
        how = f"exited with {code}" if code >= 0 else f"killed by signal {-code}"
        if oom_at is not None:
            how = f"killed for memory at its {oom_at} limit"
        limit = self.memory_limit
        raise DetectorsCannotRun(
            f"{self.failures} detectors in a row died before starting any image "
            f"(the last {how}: {last})"
            + (
                f"; is --memory-limit {limit // MIB} MiB enough for a detector to load its model?"
                if limit is not None
                else ""
            )
        )
