"""The API's bounded pool of detector worker processes.

Used by the app (``facescan_api.app``) for every /detect. Each worker is a process of
its own single-process executor (spawned, so no thread or lock of the server is
inherited), started with ``work.init``, which loads the model once. A request is
admitted only while fewer than ``workers + queue`` are admitted; the next is refused
at once with :class:`Busy` (503 with Retry-After), so nothing queues without bound. An
upload past its timeout has its worker killed and replaced (a decoder that never
returns cannot be cancelled otherwise); a worker that dies (the kernel's OOM killer)
is replaced too, and its request answered :class:`WorkerLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from facescan_api import work
from facescan_detector.errors import StartupError

log = logging.getLogger("facescan.api.pool")


class Busy(Exception):
    """Every worker is busy and the waiting room is full."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"all detector workers are busy; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WorkerLost(Exception):
    """The worker process died while detecting (killed for memory, most likely)."""


class UploadTimeout(Exception):
    """Loading and detecting the upload took longer than the timeout."""


@dataclass
class _Slot:
    executor: ProcessPoolExecutor
    info: work.WorkerInfo | None = None
    busy: bool = False
    pidfd: int | None = None
    """The worker process itself (os.pidfd_open, once it said hello): what a hung
    worker is killed through, so that a PID recycled after the worker died is never
    signalled. None where the kernel has no pidfds; then its PID."""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.info is not None:
                os.kill(self.info.pid, signal.SIGKILL)

    def forget(self) -> None:
        """Closes the pidfd (the slot is being replaced or the pool closed)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


@dataclass
class PoolStats:
    """What /health and /metrics report about the pool."""

    workers: int
    ready: int
    busy: int
    waiting: int
    capacity: int
    models: tuple[str, ...] = ()
    gpu_available: bool = False
    restarts: int = 0
    errors: list[str] = field(default_factory=list)


class DetectorPool:
    """``workers`` detector processes and room for ``queue`` waiting requests."""

    def __init__(
        self, config: work.WorkerConfig, *, workers: int, queue: int, timeout_s: float
    ) -> None:
        self.config = config
        self.workers = workers
        self.capacity = workers + queue
        self.timeout_s = timeout_s
        self._idle: deque[_Slot] = deque()
        self._waiters: deque[asyncio.Future[_Slot]] = deque()
        """Requests waiting for a worker, first come first served."""
        self._slots: list[_Slot] = []
        self._admitted = 0
        self._busy = 0
        self._restarts = 0
        self._mean_s = 1.0
        """A running mean of detection seconds, for Retry-After."""
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self) -> _Slot:
        executor = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=work.init,
            initargs=(self.config,),
        )
        slot = _Slot(executor)
        self._slots.append(slot)
        return slot

    async def _warm(self, slot: _Slot) -> work.WorkerInfo:
        info = await asyncio.wrap_future(slot.executor.submit(work.hello))
        slot.info = info
        with contextlib.suppress(OSError):  # gone already, or no pidfds here: the PID then
            slot.pidfd = os.pidfd_open(info.pid)
        return info

    async def start(self) -> None:
        """Starts every worker and waits until each has loaded its model; StartupError
        when a model cannot load."""
        slots = [self._spawn() for _ in range(self.workers)]
        infos = await asyncio.gather(*(self._warm(slot) for slot in slots))
        errors = sorted({info.error for info in infos if info.error})
        if errors:
            self.close()
            raise StartupError("; ".join(errors))
        for slot in slots:
            self._release(slot)
        log.info("%d detector workers ready (%s)", self.workers, self.config.model)

    def stats(self) -> PoolStats:
        ready = [s.info for s in self._slots if s.info is not None and s.info.error is None]
        return PoolStats(
            workers=self.workers,
            ready=len(ready),
            busy=self._busy,
            waiting=self._admitted - self._busy,
            capacity=self.capacity,
            models=tuple(sorted({m for info in ready for m in info.models})),
            gpu_available=any(info.gpu_available for info in ready),
            restarts=self._restarts,
            errors=sorted({s.info.error for s in self._slots if s.info and s.info.error}),
        )

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead at the mean pace."""
        return max(1, math.ceil(self._mean_s * self.capacity / self.workers))

    async def detect(self, data: bytes) -> work.Detected | work.Refused:
        """The worker's answer for one upload; Busy when the pool is full."""
        if self._admitted >= self.capacity:
            raise Busy(self.retry_after())
        self._admitted += 1
        try:
            slot = await self._acquire()
            self._busy += 1
            try:
                return await self._on(slot, data)
            finally:
                self._busy -= 1
        finally:
            self._admitted -= 1

    async def _on(self, slot: _Slot, data: bytes) -> work.Detected | work.Refused:
        loop = asyncio.get_running_loop()
        started = loop.time()
        slot.busy = True
        try:
            future: Future[work.Detected | work.Refused] = slot.executor.submit(work.detect, data)
        except BrokenProcessPool as exc:
            self._replace(slot)
            raise WorkerLost("the detector worker had died") from exc
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            slot.kill()
            self._replace(slot)
            raise UploadTimeout(
                f"loading and detecting the upload took longer than {self.timeout_s:g} s"
            ) from None
        except BrokenProcessPool as exc:
            self._replace(slot)
            raise WorkerLost("the detector worker died while detecting (out of memory?)") from exc
        except BaseException:
            # cancelled (the server stops): the slot returns once its work is over
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._give_back, slot))
            raise
        self._mean_s = 0.8 * self._mean_s + 0.2 * (loop.time() - started)
        slot.busy = False
        self._release(slot)
        return result

    async def _acquire(self) -> _Slot:
        """An idle worker; when there is none, or others wait already, the one handed to
        this request in its turn (a request arriving as a worker comes back never goes
        ahead of one that waits)."""
        if self._idle and not self._waiters:
            return self._idle.popleft()
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over as it was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self, slot: _Slot) -> None:
        """``slot`` to the first request waiting, else idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._idle.append(slot)

    def _give_back(self, slot: _Slot) -> None:
        slot.busy = False
        if slot in self._slots:
            self._release(slot)

    def _replace(self, slot: _Slot) -> None:
        """A fresh worker instead of ``slot``'s, ready (model loaded) in the background."""
        self._slots.remove(slot)
        slot.executor.shutdown(wait=False, cancel_futures=True)
        slot.forget()
        self._restarts += 1
        fresh = self._spawn()

        async def warm() -> None:
            try:
                info = await self._warm(fresh)
            except BrokenProcessPool:
                log.error("a replacement detector worker died while starting; again in 5 s")
                await asyncio.sleep(5)
                self._replace(fresh)
                return
            if info.error is None:
                self._release(fresh)
            else:
                log.error("a replacement detector worker cannot detect: %s", info.error)

        task = asyncio.get_running_loop().create_task(warm())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Stops every worker (a detection in progress is not waited for)."""
        for task in self._tasks:
            task.cancel()
        for slot in self._slots:
            if slot.busy:
                slot.kill()
        for slot in self._slots:
            slot.executor.shutdown(wait=True, cancel_futures=True)
            slot.forget()
        self._slots.clear()
