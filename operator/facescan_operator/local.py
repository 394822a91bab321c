"""The local runner: the reconcile loop of `facescan scan`, with detector subprocesses.

Each tick: observe (finished workers, expired leases, recent outcomes, runnable groups)
-> plan (planner.plan, the same planner the operator runs) -> apply (claim a batch per
planned worker and start `facescan-detector run` under its memory limit). A worker
killed for memory charges ``oom`` to the image it had started, which moves to the next
cascade step and is planned again on the next tick; a worker that died otherwise
charges ``crash``; the rest of its batch goes back untouched. Runs until no image is
runnable now and no worker is left.

It never spins: a detector that says it cannot start (exit 2: model files, settings)
ends the run at once, detectors that die before they start any image (a memory limit
too small to load a model) end it after ``startup_failure_budget`` in a row, and the
number of detector processes of one run is bounded (``max_processes``). Each raises
:class:`DetectorsCannotRun`, whose message says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.memlimit import MemoryLimiter, Slot
from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.sizing import MIB
from facescan_queue.errors import DatabaseUnavailable
from facescan_queue.outage import wait_out
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

log = logging.getLogger("facescan.local")

TICK_S = 0.25
RECLAIM_EVERY_S = 2.0

DETECTOR_CANNOT_START = 2
"""`facescan-detector run` exit status: usage, settings or model files (never an image)."""
DETECTOR_UNAVAILABLE = 75
"""`facescan-detector run` exit status: database or library down (the breaker's concern)."""
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ [A-Z]+ [\w.]+: ")
"""The detector's log line prefix (time, level, logger), left out of a message."""


class DetectorsCannotRun(Exception):
    """The run cannot make progress: its detectors cannot start, or it has started the
    most detector processes it may (``LocalOptions.max_processes``)."""


@dataclass(frozen=True)
class LocalOptions:
    workers: int
    batch_size: int
    max_dimension: int
    memory_limit: int | None
    memory_budget: int | None
    lease_seconds: int = 120
    image_timeout_s: float = 300.0
    model_dir: Path | None = None
    detector_command: tuple[str, ...] = ()
    """How to start a detector; default: facescan-detector beside this Python."""
    startup_failure_budget: int = 3
    """Detectors in a row that may die before starting any image before the run ends."""
    max_processes: int | None = None
    """Most detector processes this run starts (None: no bound)."""


@dataclass
class Worker:
    owner: str
    library: str
    batch: BatchPlan
    process: subprocess.Popen[bytes]
    slot: Slot
    log_path: Path
    claimed: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def running(self) -> RunningBatch:
        return RunningBatch(
            self.owner, self.batch.step, self.batch.size_class, self.batch.memory_bytes
        )


@dataclass
class Libraries:
    """The libraries this run works on: name -> root directory."""

    roots: dict[str, Path]
    settings: dict[str, PlanSettings]


class LocalRunner:
    def __init__(
        self,
        queue: Queue,
        dsn: str,
        options: LocalOptions,
        limiter: MemoryLimiter,
        *,
        on_tick: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.queue = queue
        self.dsn = dsn
        self.options = options
        self.limiter = limiter
        self.on_tick = on_tick
        self.workers: dict[str, Worker] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.events: list[str] = []
        self._serial = 0
        self._prefix = f"local-{socket.gethostname()}-{os.getpid()}"
        _sweep_logs_of_dead_runs()
        self._logs = Path(tempfile.mkdtemp(prefix=f"{LOGS_PREFIX}{os.getpid()}-"))
        self._last_reclaim = 0.0
        self._startup_failures = 0
        """Detectors in a row that died before starting any image."""
        self._processes = 0

    async def run(self, libraries: Libraries) -> None:
        """Reconciles until nothing is runnable now and no worker is left."""
        for name in libraries.roots:
            self.breakers[name] = CircuitBreaker()
        try:
            while True:
                busy = await wait_out(lambda: self._tick(libraries), on_wait=self._database_down)
                for breaker in self.breakers.values():
                    breaker.database_up()
                if self.on_tick:
                    await self.on_tick()
                if not busy:
                    return
                await asyncio.sleep(TICK_S)
        finally:
            await self._stop_all()
            shutil.rmtree(self._logs, ignore_errors=True)

    def _database_down(self, delay: float, exc: DatabaseUnavailable) -> None:
        for breaker in self.breakers.values():
            breaker.database_down(str(exc), time.monotonic())
        self._event(f"database unavailable, waiting {delay:.0f} s: {exc}")

    async def _tick(self, libraries: Libraries) -> bool:
        await self._reap()
        now = time.monotonic()
        if now - self._last_reclaim >= RECLAIM_EVERY_S:
            self._last_reclaim = now
            for name in libraries.roots:
                for released in await self.queue.reclaim_expired(name):
                    self._event(
                        f"lease {released.owner} expired: {released.released} images "
                        "returned" + (" (1 charged crash)" if released.charged_image else "")
                    )
        runnable_anywhere = False
        for name, root in libraries.roots.items():
            settings = libraries.settings[name]
            breaker = self.breakers[name]
            outcomes = await self.queue.recent_outcomes(
                name, window=breaker.window, after_id=breaker.after_id
            )
            was = breaker.state
            breaker.observe(outcomes, now)
            if breaker.state != was:
                self._event(f"circuit breaker {breaker.state}: {breaker.reason}".rstrip(": "))
            cap = max(1, self.options.workers * self.options.batch_size * 2)
            groups = await self.queue.runnable_groups(name, cap=cap)
            runnable_anywhere = runnable_anywhere or bool(groups)
            capacity = Capacity(
                workers=self.options.workers - (len(self.workers) - self._count(name)),
                memory_bytes=self._budget_left(name),
                worker_memory_cap=self.options.memory_limit,
            )
            running = [w.running() for w in self.workers.values() if w.library == name]
            allowed = breaker.allowed(now)
            for batch in plan(groups, running, capacity, settings, allowed=allowed):
                if await self._start(name, root, batch) and allowed == 1:
                    breaker.probe_started()
        return runnable_anywhere or bool(self.workers)

    def _threads(self) -> int:
        """Each worker's share of this process's CPUs (HOG takes two when it may)."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, cpus // self.options.workers)

    def _count(self, library: str) -> int:
        return sum(1 for w in self.workers.values() if w.library == library)

    def _budget_left(self, library: str) -> int | None:
        if self.options.memory_budget is None:
            return None
        others = sum(w.batch.memory_bytes for w in self.workers.values() if w.library != library)
        return self.options.memory_budget - others

    async def _start(self, library: str, root: Path, batch: BatchPlan) -> bool:
        bound = self.options.max_processes
        if bound is not None and self._processes >= bound:
            raise DetectorsCannotRun(
                f"started {self._processes} detector processes, the most this scan allows "
                f"for its images; the last ones ended: {'; '.join(self.events[-3:]) or 'ok'}. "
                "Run `facescan scan` again to go on"
            )
        self._serial += 1
        owner = f"{self._prefix}-{self._serial}"
        claimed = await self.queue.claim(
            library,
            owner,
            step=batch.step,
            size_class=batch.size_class,
            limit=batch.limit,
            lease_seconds=self.options.lease_seconds,
        )
        if not claimed:
            return False
        slot = self.limiter.slot(owner, batch.memory_bytes)
        log_path = self._logs / f"{owner}.log"
        command = [
            *(self.options.detector_command or _default_detector()),
            "run",
            "--owner",
            owner,
            "--root",
            str(root),
            "--max-dimension",
            str(self.options.max_dimension),
            "--timeout",
            str(self.options.image_timeout_s),
            "--lease-seconds",
            str(self.options.lease_seconds),
            "--model",
            batch.model,
            "--threads",
            str(self._threads()),
        ]
        if self.options.model_dir is not None:
            command += ["--model-dir", str(self.options.model_dir)]
        env = {**os.environ, "FACESCAN_DSN": self.dsn, "MALLOC_ARENA_MAX": "2"}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
                preexec_fn=_ended_with_this_process(slot.preexec()),
                start_new_session=True,
            )
        self._processes += 1
        self.workers[owner] = Worker(
            owner, library, batch, process, slot, log_path, claimed=len(claimed)
        )
        log.info(
            "started %s: %d images, step %d (%s@%g), size class %d, memory %d MiB",
            owner,
            len(claimed),
            batch.step,
            batch.model,
            batch.scale,
            batch.size_class,
            batch.memory_bytes // MIB,
        )
        return True

    async def _reap(self) -> None:
        for owner, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            oom = worker.slot.oom_killed()
            if oom:
                charge, why = (
                    ErrorType.OOM,
                    (
                        f"worker killed for memory at its {worker.slot.limit_bytes // MIB} MiB "
                        f"limit ({worker.batch.model}@{worker.batch.scale:g})"
                    ),
                )
            else:
                charge, why = (
                    ErrorType.CRASH,
                    f"worker exited with {code}: {_tail(worker.log_path)}",
                )
            # forgotten only once its lease is handed back: while the database is down
            # this raises, and the next tick tries again (else its images stay leased)
            released = await self.queue.release(owner, charge=charge, error=why)
            del self.workers[owner]
            worker.slot.cleanup()
            if released.charged_image is not None:
                self._event(
                    f"{owner}: {why}; its image in progress was charged {charge}, "
                    f"{released.released} others returned untouched"
                )
            elif code not in (0, 3, 4):
                self._event(f"{owner} exited with {code}: {_tail(worker.log_path)}")
            tail = _LOG_PREFIX.sub("", _tail(worker.log_path))
            worker.log_path.unlink(missing_ok=True)
            started_nothing = released.charged_image is None and released.released >= worker.claimed
            self._judge_startup(worker, code, oom, started_nothing, tail)

    def _judge_startup(
        self, worker: Worker, code: int, oom: bool, started_nothing: bool, tail: str
    ) -> None:
        """Ends the run (DetectorsCannotRun) when its detectors cannot start."""
        if code == DETECTOR_CANNOT_START:
            raise DetectorsCannotRun(f"the detector cannot start: {tail}")
        if code in (0, DETECTOR_UNAVAILABLE) or not started_nothing:
            self._startup_failures = 0
            return
        self._startup_failures += 1
        if self._startup_failures < self.options.startup_failure_budget:
            return
        how = f"exited with {code}" if code >= 0 else f"killed by signal {-code}"
        if oom:
            how = f"killed for memory at its {worker.slot.limit_bytes // MIB} MiB limit"
        raise DetectorsCannotRun(
            f"{self._startup_failures} detectors in a row died before starting any image "
            f"(the last {how}: {tail})"
            + (
                f"; is --memory-limit {self.options.memory_limit // MIB} MiB enough "
                "for a detector to load its model?"
                if self.options.memory_limit is not None
                else ""
            )
        )

    async def _stop_all(self) -> None:
        """Interrupted: stop the workers and hand their images back, uncharged."""
        for owner, worker in list(self.workers.items()):
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait()
            worker.slot.cleanup()
            with contextlib.suppress(DatabaseUnavailable):
                # if not, the lease expires and is reclaimed on the next run
                await self.queue.release(owner)
            del self.workers[owner]
        self.limiter.close()

    def _event(self, message: str) -> None:
        self.events.append(message)
        log.warning(message)


LOGS_PREFIX = "facescan-workers-"
"""The workers' log folder of a run: <tmp>/facescan-workers-<pid of the run>-<random>."""


def _sweep_logs_of_dead_runs() -> None:
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


_PR_SET_PDEATHSIG = 1


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


def _default_detector() -> Sequence[str]:
    beside = Path(sys.executable).with_name("facescan-detector")
    if beside.exists():
        return (str(beside),)
    return (sys.executable, "-m", "facescan_detector.cli")


def _tail(path: Path, limit: int = 300) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][-limit:] if lines else "no output"
