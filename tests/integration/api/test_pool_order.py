"""The worker pool serves waiting requests first come, first served: a client that sends
its next upload the moment its last one is answered (a tight loop, as a busy service
does) never goes ahead of a request that was already waiting for the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from facescan_api.pool import DetectorPool
from facescan_api.work import Detected, WorkerConfig
from tests.integration.api.support import SAMPLES

pytestmark = pytest.mark.slow


async def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the pool never got there"
        await asyncio.sleep(0.01)


async def test_a_waiting_request_goes_before_the_next_upload_of_a_tight_loop() -> None:
    config = WorkerConfig(model="hog", upsample=0, threads=1, model_dir=None, max_dimension=640)
    pool = DetectorPool(config, workers=1, queue=2, timeout_s=60)
    await pool.start()
    data = (SAMPLES / "obama.jpg").read_bytes()
    served: list[str] = []

    async def tight_loop() -> None:
        for n in (1, 2):  # the second upload is sent as the first is answered
            assert isinstance(await pool.detect(data), Detected)
            served.append(f"loop {n}")

    async def waiting() -> None:
        assert isinstance(await pool.detect(data), Detected)
        served.append("waiting")

    try:
        loop_task = asyncio.create_task(tight_loop())
        await _until(lambda: pool.stats().busy == 1)
        waiting_task = asyncio.create_task(waiting())
        await _until(lambda: pool.stats().waiting == 1)

        await asyncio.gather(loop_task, waiting_task)
    finally:
        pool.close()

    assert served == ["loop 1", "waiting", "loop 2"]
