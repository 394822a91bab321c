"""Works the API library's queue: ``facescan-detector run`` processes, as many as allowed.

Runs as a background task of the server (``facescan_api.run``) when /process is on.
Each round it reclaims the library's expired leases (a worker that died), asks for the
runnable groups (cascade step, size class) and starts one detector per group while
fewer than ``process_workers`` run, each with the Job contract's assignment in its
environment: it claims its own batch, commits every image's faces or typed failure and
exits when none is left. Detection therefore runs exactly as anywhere else in facescan
(leases, heartbeats, the cascade, retries with backoff), in its own process, so that a
detector's crash or out-of-memory never takes the server down. A worker gets SIGTERM
when the server dies, even by SIGKILL, and hands its lease back; a later server takes
the images again. Why processes, not ``facescan_detector.run.run`` in a task: run()
owns SIGTERM and its process's memory, which the server's uvicorn and its pool need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from facescan_queue.errors import QueueError
from facescan_queue.repository import Queue

log = logging.getLogger("facescan.api.dispatch")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """How each detector of the API library runs (besides its assignment)."""

    library: str
    root: Path
    dsn: str
    cascade: tuple[tuple[str, float], ...]
    threads: int
    upsample: int
    image_timeout_s: float
    model_dir: Path | None
    batch_size: int = 25


def detector_command() -> list[str]:
    beside = Path(sys.executable).with_name("facescan-detector")
    if beside.exists():
        return [str(beside), "run"]
    return [sys.executable, "-m", "facescan_detector.cli", "run"]


def assignment_env(spec: WorkerSpec, owner: str, step: int, size_class: int) -> dict[str, str]:
    """The detector's environment: ours without FACESCAN_* (no API keys or callback
    secret reach it), plus the Job contract's assignment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESCAN_")}
    model = spec.cascade[min(step, len(spec.cascade) - 1)][0]
    env.update(
        {
            "FACESCAN_DSN": spec.dsn,
            "FACESCAN_LEASE_OWNER": owner,
            "FACESCAN_LIBRARY": spec.library,
            "FACESCAN_STEP": str(step),
            "FACESCAN_SIZE_CLASS": str(size_class),
            "FACESCAN_BATCH_SIZE": str(spec.batch_size),
            "FACESCAN_LIBRARY_ROOT": str(spec.root),
            "FACESCAN_MODEL": model,
            "FACESCAN_THREADS": str(spec.threads),
            "FACESCAN_HOG_UPSAMPLE": str(spec.upsample),
            "FACESCAN_IMAGE_TIMEOUT_S": str(spec.image_timeout_s),
        }
    )
    if spec.model_dir is not None:
        env["FACESCAN_MODEL_DIR"] = str(spec.model_dir)
    return env


class Dispatcher:
    def __init__(self, queue: Queue, spec: WorkerSpec, *, workers: int, poll_s: float) -> None:
        self.queue = queue
        self.spec = spec
        self.workers = workers
        self.poll_s = poll_s
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.kicked = asyncio.Event()

    def kick(self) -> None:
        """Look now (a job was just queued)."""
        self.kicked.set()

    async def run(self) -> None:
        """Dispatches for ever (cancel it to stop; running workers get SIGTERM)."""
        try:
            while True:
                try:
                    await self.round()
                except QueueError as exc:
                    log.warning("the API library's workers wait for the database: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.kicked.wait(), self.poll_s)
                self.kicked.clear()
        finally:
            self.stop()

    async def round(self) -> None:
        for owner, process in list(self.running.items()):
            if process.poll() is not None:
                del self.running[owner]
                log.info("worker %s exited %s", owner, process.returncode)
        await self.queue.reclaim_expired(self.spec.library)
        if len(self.running) >= self.workers:
            return
        groups = await self.queue.runnable_groups(self.spec.library, cap=self.spec.batch_size)
        for group in groups[: self.workers - len(self.running)]:
            owner = f"api-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            env = assignment_env(self.spec, owner, group.step, group.size_class)
            self.running[owner] = _start(detector_command(), env)
            log.info(
                "worker %s started (step %d, size class %d)", owner, group.step, group.size_class
            )

    def stop(self) -> None:
        """SIGTERM to every running worker (each hands its lease back), then waits."""
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def _start(command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # its one-line summary; the database is the truth
        preexec_fn=_terminated_with_parent(),
        start_new_session=True,
    )


def _terminated_with_parent() -> Callable[[], None] | None:
    """On Linux, SIGTERM to the worker when the server dies, even by SIGKILL."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def run() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return run
