"""The bounded worker pool over real HTTP: a full pool answers 503 with Retry-After at
once (never an unbounded queue), an upload past the timeout gets 422 and its worker is
replaced, and the request that waited is then served by the new worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.api.support import SAMPLES, Answer, ApiServer, server_env

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.5
"""The tight server's --timeout: far under what the big upload takes (~5 s of HOG)."""


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One one-thread hog worker, room for one waiting upload, no cap on the long side."""
    log = tmp_path_factory.mktemp("tight") / "server.log"
    args = ["--no-auth", "--workers", "1", "--queue", "1", "--threads", "1"]
    args += ["--max-dimension", "0", "--timeout", str(TIMEOUT_S)]
    api = ApiServer(args, server_env(), log)
    yield api
    assert api.stop() == 0, api.output()


def big_photo(tmp_path: Path) -> bytes:
    """group_t1.jpg enlarged to 4000 px: seconds of HOG at full size."""
    image = Image.open(SAMPLES / "group_t1.jpg").convert("RGB")
    image.resize((4000, 2770), Image.Resampling.BILINEAR).save(tmp_path / "big.jpg", quality=85)
    return (tmp_path / "big.jpg").read_bytes()


def in_thread(call: Callable[[], Answer]) -> tuple[threading.Thread, list[Answer]]:
    answers: list[Answer] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def wait_for(api: ApiServer, gauge: str, value: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while api.metric(f"facescan_api_pool_{gauge}", key=None) != value:
        assert time.monotonic() < deadline, f"pool {gauge} never reached {value}"
        time.sleep(0.02)


def test_full_pool_is_503_with_retry_after_and_a_hung_upload_is_cut(
    tight: ApiServer, tmp_path: Path
) -> None:
    small = (SAMPLES / "obama.jpg").read_bytes()
    slow, slow_answer = in_thread(lambda: tight.detect(big_photo(tmp_path), key=None))
    wait_for(tight, "busy", 1)
    waiting, waiting_answer = in_thread(lambda: tight.detect(small, key=None))
    wait_for(tight, "waiting", 1)

    started = time.monotonic()
    full = tight.detect(small, key=None)

    assert time.monotonic() - started < 2  # refused at once, not queued
    assert full.status == 503
    assert full.json()["error"] == "busy"
    assert int(full.headers["retry-after"]) >= 1
    assert tight.metric("facescan_api_pool_rejected_total", key=None) == 1.0

    slow.join(60)
    waiting.join(60)
    (cut,) = slow_answer
    assert cut.status == 422
    assert cut.json()["error"] == "image_timeout"
    assert f"longer than {TIMEOUT_S:g} s" in cut.json()["detail"]
    (served,) = waiting_answer  # by the worker that replaced the killed one
    assert served.status == 200, served.body
    assert len(served.json()["faces"]) == 1

    health = tight.request("GET", "/health").json()
    assert health["pool"] == {"workers": 1, "ready": 1, "busy": 0, "waiting": 0, "capacity": 2}
    assert tight.detect(small, key=None).status == 200
