"""The local runner: the control loop of `facescan scan`, with detector subprocesses.

Each tick observes each library (its workers, their leases, the recent outcomes, the
runnable groups), decides with the same pure function as the operator (loop.decide) and
applies the plan through this runner's side of the loop's Runner port: it hands back
the leases of ended workers and starts `facescan-detector run` subprocesses
(workers.py) under their memory limits. A worker is
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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from facescan_operator import loop, workers
from facescan_operator.breaker import CircuitBreaker
from facescan_operator.memlimit import MemoryLimiter
from facescan_operator.planner import BatchPlan
from facescan_operator.settlement import Release
from facescan_operator.sizing import MIB
from facescan_operator.workers import Assignment, DetectorsCannotRun, Worker
from facescan_queue.errors import DatabaseUnavailable
from facescan_queue.models import Released
from facescan_queue.outage import wait_out
from facescan_queue.repository import Queue

log = logging.getLogger("facescan.local")

TICK_S = 0.25
RECLAIM_EVERY_S = 2.0


@dataclass(frozen=True)
class LocalOptions:
    workers: int
    """Most detector processes at once, all libraries together."""
    memory_limit: int | None
    memory_budget: int | None
    """Total memory of the running detectors, all libraries together."""
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
    """The libraries this run works on: name -> root directory, and its policy."""

    roots: dict[str, Path]
    policies: dict[str, loop.Policy]


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
        self.policies: dict[str, loop.Policy] = {}
        self.events: list[str] = []
        self._serial = 0
        self._prefix = f"local-{socket.gethostname()}-{os.getpid()}"
        workers.sweep_logs_of_dead_runs()
        self._logs = Path(tempfile.mkdtemp(prefix=f"{workers.LOGS_PREFIX}{os.getpid()}-"))
        self._last_reclaim = 0.0
        self._startup = workers.Startup(options.startup_failure_budget, options.memory_limit)
        self._processes = 0

    async def run(self, libraries: Libraries) -> None:
        """Reconciles until nothing is runnable now and no worker is left."""
        self.policies = libraries.policies
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
        now = time.monotonic()
        if now - self._last_reclaim >= RECLAIM_EVERY_S:
            self._last_reclaim = now
            for name in libraries.roots:
                for released in await self.queue.reclaim_expired(name):
                    self._event(
                        f"lease {released.owner} expired: {released.released} images "
                        "returned" + (" (1 charged crash)" if released.charged_image else "")
                    )
        runnable = False
        for name, root in libraries.roots.items():
            plan = loop.decide(self._policy(name), await self._observe(name))
            if plan.launches or plan.releases:
                log.debug("%s: %s", name, "; ".join(plan.lines()))
            done = await loop.apply(plan, _Adapter(self, name, root))
            if plan.probe and done.launched:
                self.breakers[name].probe_started()
            if done.refused is not None:
                raise done.refused
            runnable = runnable or plan.runnable
        return runnable or bool(self.workers)

    async def _observe(self, library: str) -> loop.Observation:
        breaker = self.breakers[library]
        outcomes = await self.queue.recent_outcomes(
            library, window=breaker.window, after_id=breaker.after_id
        )
        was, now = breaker.state, datetime.now(UTC)
        breaker.observe(outcomes, time.monotonic())
        if breaker.state != was:
            self._event(f"circuit breaker {breaker.state}: {breaker.reason}".rstrip(": "))
        mine = [w for w in self.workers.values() if w.library == library]
        # the leases before the groups: a worker that claims in between is counted
        # twice (this tick plans less), never not at all
        leases = [
            lease for lease in await self.queue.leases(library) if lease.owner in self.workers
        ]
        cap = max(1, self.options.workers * self.policies[library].batch_size * 2)
        return loop.Observation(
            now,
            [w.view(now) for w in mine],
            leases,
            await self.queue.runnable_groups(library, cap=cap),
            breaker.allowed(time.monotonic()),
        )

    def _policy(self, library: str) -> loop.Policy:
        """The library's policy with its share of the machine this tick: the workers and
        the memory the other libraries' workers leave, each worker's memory capped."""
        others = [w for w in self.workers.values() if w.library != library]
        budget = self.options.memory_budget
        return replace(
            self.policies[library],
            workers=self.options.workers - len(others),
            memory_budget=None if budget is None else budget - sum(w.memory for w in others),
            worker_memory_cap=self.options.memory_limit,
        )

    def _start(self, library: str, root: Path, batch: BatchPlan) -> str:
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
            *("--timeout", str(o.image_timeout_s)),
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
        return owner

    def _forget(self, worker: Worker, released: Released | None) -> None:
        """Drops an ended worker, its lease (if it held one at its end) ``released``."""
        del self.workers[worker.owner]
        code, last, oom = worker.process.returncode, worker.last_line(), worker.slot.oom_killed()
        worker.slot.cleanup()
        worker.log_path.unlink(missing_ok=True)
        charged = released is not None and released.charged_image is not None
        if not charged and code not in (0, *workers.DETECTOR_ON_AN_IMAGE):
            self._event(f"{worker.owner} exited with {code}: {last}")
        self._startup.judge(
            code,
            released is not None and released.charged_image is not None,
            f"{worker.slot.limit_bytes // MIB} MiB" if oom else None,
            last,
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


class _Adapter:
    """The loop's Runner port for one library of a LocalRunner: a worker is a detector
    subprocess, forgotten as soon as it ended and its lease (if any) is handed back."""

    def __init__(self, runner: LocalRunner, library: str, root: Path) -> None:
        self.runner, self.library, self.root = runner, library, root

    async def release(self, release: Release) -> Released:
        # a worker is forgotten only once its lease is handed back: while the database
        # is down this raises, and the next tick settles it (else it stays leased)
        runner = self.runner
        released = await runner.queue.release(
            release.owner, charge=release.charge, error=release.reason
        )
        if released.charged_image is not None:
            runner._event(
                f"{release.owner}: {release.reason}; its image in progress was charged "
                f"{release.charge}, {released.released} others returned untouched"
            )
        runner._forget(runner.workers[release.owner], released)
        return released

    async def forget(self, worker: str) -> None:
        self.runner._forget(self.runner.workers[worker], None)

    async def launch(self, launch: loop.Launch) -> str:
        return self.runner._start(self.library, self.root, launch.batch)
