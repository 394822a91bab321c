"""Limits of one image: a detection that runs past the per-image timeout, and host memory
running out. Either way the culprit moves to the next cascade step uncharged, the process
stops with its own exit code and the rest of its batch goes back to the queue untouched."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import asyncpg
import pytest

from facescan_queue.models import LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType
from tests.integration.detector.support import (
    HOG_THEN_HALF,
    LIB,
    attempts_of,
    copy_samples,
    detector_env,
    images_by_path,
    register_and_claim,
    run_detector,
    untouched,
)

EXIT_TIMEOUT = 3
EXIT_OOM = 4
ADDRESS_SPACE = int(1.5 * 2**30)
"""Enough for Python, dlib and the models; far from the ~4.5 GB dlib's CNN needs for a
1280 px photo upsampled once, so its allocation fails (std::bad_alloc)."""

CNN_THEN_HOG = LibraryPolicy(cascade_models=("cnn", "hog"), cascade_scales=(1.0, 1.0))


async def test_image_past_the_timeout_fails_as_timeout_and_moves_to_the_next_step(
    queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    await queue.ensure_library(LIB, HOG_THEN_HALF)
    paths = copy_samples(root, ["group_t1.jpg", "obama.jpg", "cameraman.png"])
    await register_and_claim(queue, paths, "job-a")

    run = await run_detector(dsn, "job-a", root, "--timeout", "0.05")  # HOG takes ~0.4 s

    assert run.returncode == EXIT_TIMEOUT, run.stderr
    assert "group_t1.jpg" in run.summary["reason"]
    [failure] = await queue.failures(LIB)
    assert (failure.path, failure.error_type) == ("group_t1.jpg", ErrorType.TIMEOUT)
    assert (failure.last_model, failure.last_scale, failure.dead) == ("hog", 1.0, False)
    images = await images_by_path(db)
    culprit = images["group_t1.jpg"]
    assert (culprit["state"], culprit["step"], culprit["attempts"]) == ("pending", 1, 0)
    assert [untouched(images[p]) for p in paths[1:]] == [True, True]
    assert [await attempts_of(db, p) for p in paths[1:]] == [[], []]
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0
    groups = await queue.runnable_groups(LIB, cap=10)
    assert {(g.step, g.runnable) for g in groups} == {(0, 2), (1, 1)}


SPINNING_DECODER = '''
"""A Pillow image format whose decoder never returns, registered in the detector
process at its start (sitecustomize): files starting b"SPIN" decode for ever."""
import time

from PIL import Image, ImageFile


class SpinDecoder(ImageFile.PyDecoder):
    _pulls_fd = True

    def decode(self, buffer):
        while True:
            time.sleep(0.05)


class SpinImageFile(ImageFile.ImageFile):
    format = "SPIN"

    def _open(self):
        self._mode = "RGB"
        self._size = (640, 480)
        self.tile = [ImageFile._Tile("spin", (0, 0, 640, 480), 0, None)]


Image.register_decoder("spin", SpinDecoder)
Image.register_open("SPIN", SpinImageFile, lambda prefix: prefix[:4] == b"SPIN")
'''


async def test_decoder_that_never_returns_fails_as_timeout_and_the_process_ends(
    queue: Queue, db: asyncpg.Connection, dsn: str, root: Path, tmp_path: Path
) -> None:
    """Decoding is inside the per-image timeout: a decoder spinning on a file is cut
    like a hung detection, and does not hold its lease until the Job's deadline."""
    await queue.ensure_library(LIB, HOG_THEN_HALF)
    good = copy_samples(root, ["obama.jpg", "cameraman.png"])
    (root / "never.jpg").write_bytes(b"SPIN" + bytes(1000))
    paths = [good[0], "never.jpg", good[1]]  # the spinner is prefetched during obama.jpg
    await register_and_claim(queue, paths, "job-a")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SPINNING_DECODER)
    pythonpath = [str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = detector_env(dsn, PYTHONPATH=os.pathsep.join(pythonpath))

    started = time.monotonic()
    run = await run_detector(dsn, "job-a", root, "--timeout", "5", env=env)

    assert run.returncode == EXIT_TIMEOUT, run.stderr
    assert time.monotonic() - started < 30
    assert "never.jpg: loading took longer than 5 s" in run.summary["reason"]
    [failure] = await queue.failures(LIB)
    assert (failure.path, failure.error_type) == ("never.jpg", ErrorType.TIMEOUT)
    assert (failure.last_model, failure.last_scale, failure.dead) == ("hog", 1.0, False)
    images = await images_by_path(db)
    assert images["obama.jpg"]["state"] == "done"
    spinner = images["never.jpg"]
    assert (spinner["state"], spinner["step"], spinner["attempts"]) == ("pending", 1, 0)
    assert untouched(images["cameraman.png"])
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0


@pytest.mark.slow  # dlib's CNN, under an address-space limit
async def test_host_out_of_memory_is_charged_oom_and_moves_to_the_next_step(
    queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    await queue.ensure_library(LIB, CNN_THEN_HOG)
    paths = copy_samples(root, ["group_t1.jpg", "obama.jpg", "cameraman.png"])
    await register_and_claim(queue, paths, "job-a")

    def limit_memory() -> None:  # what the local runner does where it has no cgroup
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    run = await run_detector(dsn, "job-a", root, preexec_fn=limit_memory)

    assert run.returncode == EXIT_OOM, run.stderr
    assert "Traceback" not in run.stderr
    [failure] = await queue.failures(LIB)
    assert (failure.path, failure.error_type) == ("group_t1.jpg", ErrorType.OOM)
    assert "bad_alloc" in failure.last_error
    assert (failure.last_model, failure.dead) == ("cnn", False)
    images = await images_by_path(db)
    culprit = images["group_t1.jpg"]
    assert (culprit["state"], culprit["step"], culprit["attempts"]) == ("pending", 1, 0)
    [attempt] = await attempts_of(db, "group_t1.jpg")
    assert (attempt["model"], attempt["outcome"], attempt["error_type"]) == (
        "cnn",
        "failed",
        "oom",
    )
    assert [untouched(images[p]) for p in paths[1:]] == [True, True]
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0
