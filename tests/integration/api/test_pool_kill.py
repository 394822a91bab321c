"""A hung detector worker is killed through a pidfd of its own process: once the worker
has died and its PID has gone to another process, killing the slot never signals that
process (a plain os.kill by PID would)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess

import pytest

from facescan_api.pool import DetectorPool
from facescan_api.work import WorkerConfig

pytestmark = pytest.mark.slow


async def test_killing_a_slot_whose_worker_died_spares_the_process_that_got_its_pid() -> None:
    config = WorkerConfig(model="hog", upsample=0, threads=1, model_dir=None, max_dimension=640)
    pool = DetectorPool(config, workers=1, queue=0, timeout_s=60)
    await pool.start()
    (slot,) = pool._slots
    assert slot.info is not None
    assert slot.pidfd is not None
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(slot.info.pid, signal.SIGKILL)  # the worker dies ...
        deadline = asyncio.get_running_loop().time() + 30
        while os.path.exists(f"/proc/{slot.info.pid}"):  # ... and is reaped
            assert asyncio.get_running_loop().time() < deadline, "the worker was not reaped"
            await asyncio.sleep(0.01)
        slot.info = dataclasses.replace(slot.info, pid=bystander.pid)  # its PID, recycled

        slot.kill()

        await asyncio.sleep(0.2)
        assert bystander.poll() is None, "the process that got the PID was killed"
    finally:
        bystander.kill()
        bystander.wait()
        pool.close()
