"""The local runner: the control loop of `facescan scan`, with detector subprocesses.

Each tick observes (ended workers, expired leases, recent outcomes, runnable groups),
decides with the same pure functions as the operator (loop.settle, loop.unclaimed,
planner.plan) and applies: it hands back the leases of ended workers and starts
`facescan-detector run` subprocesses (workers.py) under their memory limits. A worker is
started for an assignment and its detector claims its own batch, as a Job's does. A
worker killed for memory charges ``oom`` to the image it had started, which moves to the
next cascade step and is planned again on the next tick; a worker that died otherwise
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
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from facescan_operator import loop, workers
from facescan_operator.breaker import CircuitBreaker
from facescan_operator.memlimit import MemoryLimiter
from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, plan
from facescan_operator.sizing import MIB
from facescan_operator.workers import Assignment, Worker
from facescan_queue.errors import DatabaseUnavailable
from facescan_queue.models import Released
from facescan_queue.outage import wait_out
from facescan_queue.repository import Queue

log = logging.getLogger("facescan.local")

TICK_S = 0.25
RECLAIM_EVERY_S = 2.0


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
        workers.sweep_logs_of_dead_runs()
        self._logs = Path(tempfile.mkdtemp(prefix=f"{workers.LOGS_PREFIX}{os.getpid()}-"))
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
            breaker = self.breakers[name]
            outcomes = await self.queue.recent_outcomes(
                name, window=breaker.window, after_id=breaker.after_id
            )
            was = breaker.state
            breaker.observe(outcomes, now)
            if breaker.state != was:
                self._event(f"circuit breaker {breaker.state}: {breaker.reason}".rstrip(": "))
            # the leases before the groups: a worker that claims in between is counted
            # twice (this tick plans less), never not at all
            leased = {lease.owner for lease in await self.queue.leases(name)}
            cap = max(1, self.options.workers * self.options.batch_size * 2)
            mine = [w for w in self.workers.values() if w.library == name]
            groups = loop.unclaimed(
                await self.queue.runnable_groups(name, cap=cap), [w.view() for w in mine], leased
            )
            runnable_anywhere = runnable_anywhere or bool(groups)
            capacity = Capacity(
                workers=self.options.workers - (len(self.workers) - len(mine)),
                memory_bytes=self._budget_left(name),
                worker_memory_cap=self.options.memory_limit,
            )
            allowed = breaker.allowed(now)
            running = [w.running() for w in mine]
            for batch in plan(groups, running, capacity, libraries.settings[name], allowed=allowed):
                self._start(name, root, batch)
                if allowed == 1:
                    breaker.probe_started()
        return runnable_anywhere or bool(self.workers)

    def _budget_left(self, library: str) -> int | None:
        if self.options.memory_budget is None:
            return None
        others = sum(w.batch.memory_bytes for w in self.workers.values() if w.library != library)
        return self.options.memory_budget - others

    def _start(self, library: str, root: Path, batch: BatchPlan) -> None:
        bound = self.options.max_processes
        if bound is not None and self._processes >= bound:
            raise DetectorsCannotRun(
                f"started {self._processes} detector processes, the most this scan allows "
                f"for its images; the last ones ended: {'; '.join(self.events[-3:]) or 'ok'}. "
                "Run `facescan scan` again to go on"
            )
        self._serial += 1
        owner = f"{self._prefix}-{self._serial}"
        o = self.options
        command = [
            *(o.detector_command or workers.default_detector()),
            *("run", "--owner", owner, "--root", str(root)),
            *("--max-dimension", str(o.max_dimension), "--timeout", str(o.image_timeout_s)),
            *("--lease-seconds", str(o.lease_seconds), "--model", batch.model),
            *("--threads", str(workers.threads_each(o.workers))),
            *(("--model-dir", str(o.model_dir)) if o.model_dir is not None else ()),
        ]
        env = {**os.environ, "FACESCAN_DSN": self.dsn, "MALLOC_ARENA_MAX": "2"}
        slot = self.limiter.slot(owner, batch.memory_bytes)
        assignment = Assignment(owner, library, root, batch)
        self.workers[owner] = workers.start(assignment, command, env, slot, self._logs)
        self._processes += 1
        log.info(
            "started %s: up to %d images, step %d (%s@%g), size class %d, memory %d MiB",
            owner,
            batch.limit,
            batch.step,
            batch.model,
            batch.scale,
            batch.size_class,
            batch.memory_bytes // MIB,
        )

    async def _reap(self) -> None:
        """Settles the workers that ended, as the operator settles ended Jobs (loop.settle)."""
        ended = {o: w for o, w in self.workers.items() if w.process.poll() is not None}
        if not ended:
            return
        now = datetime.now(UTC)
        leases = []
        for library in {w.library for w in ended.values()}:
            leases += [lease for lease in await self.queue.leases(library) if lease.owner in ended]
        settlement = loop.settle([w.view(now) for w in ended.values()], leases, now, timedelta(0))
        # each worker is forgotten only once its lease is handed back: while the database
        # is down this raises, and the next tick settles the rest (else they stay leased)
        for release in settlement.releases:
            worker = ended[release.owner]
            released = await self.queue.release(
                release.owner, charge=release.charge, error=release.reason
            )
            if released.charged_image is not None:
                self._event(
                    f"{release.owner}: {release.reason}; its image in progress was charged "
                    f"{release.charge}, {released.released} others returned untouched"
                )
            self._forget(worker, released)
        for owner in settlement.forget:
            self._forget(ended[owner], None)

    def _forget(self, worker: Worker, released: Released | None) -> None:
        """Drops an ended worker, its lease (if it held one at its end) ``released``."""
        del self.workers[worker.owner]
        code, last, oom = worker.process.returncode, worker.last_line(), worker.slot.oom_killed()
        worker.slot.cleanup()
        worker.log_path.unlink(missing_ok=True)
        charged = released is not None and released.charged_image is not None
        if not charged and code not in (0, *workers.DETECTOR_ON_AN_IMAGE):
            self._event(f"{worker.owner} exited with {code}: {last}")
        self._judge_startup(worker, code, released, last, oom)

    def _judge_startup(
        self, worker: Worker, code: int, released: Released | None, last: str, oom: bool
    ) -> None:
        """Ends the run (DetectorsCannotRun) when its detectors cannot start. A worker
        started no image if it ended before claiming (no lease) or with its lease held
        and no image in progress (so killed loading its model, say), unless its exit
        status says an image ended it."""
        if code == loop.DETECTOR_CANNOT_START:
            raise DetectorsCannotRun(f"the detector cannot start: {last}")
        fine = (0, workers.DETECTOR_UNAVAILABLE, *workers.DETECTOR_ON_AN_IMAGE)
        if code in fine or (released is not None and released.charged_image is not None):
            self._startup_failures = 0
            return
        self._startup_failures += 1
        if self._startup_failures < self.options.startup_failure_budget:
            return
        how = f"exited with {code}" if code >= 0 else f"killed by signal {-code}"
        if oom:
            how = f"killed for memory at its {worker.slot.limit_bytes // MIB} MiB limit"
        limit = self.options.memory_limit
        raise DetectorsCannotRun(
            f"{self._startup_failures} detectors in a row died before starting any image "
            f"(the last {how}: {last})"
            + (
                f"; is --memory-limit {limit // MIB} MiB enough for a detector to load its model?"
                if limit is not None
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
