"""The detector's allocator settings: large blocks go back to the system when freed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FREE_BLOCKS = textwrap.dedent(
    """
    import ctypes, sys
    from facescan_detector.memory import tune_malloc
    if sys.argv[1] == "tuned":
        assert tune_malloc()
    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) / 1024
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = (ctypes.c_void_p,)
    # a 16 MiB block (a decoded photo) freed: glibc raises its mmap threshold to it
    big = libc.malloc(16 << 20)
    ctypes.memset(big, 1, 16 << 20)
    libc.free(big)
    # three 6 MiB blocks (pyramid levels), then a small one above them in the heap
    blocks = [libc.malloc(6 << 20) for _ in range(3)]
    above = libc.malloc(1000)
    for block in blocks:
        ctypes.memset(block, 1, 6 << 20)
    before = rss_mb()
    for block in blocks:
        libc.free(block)
    print(round(before - rss_mb()))
    """
)


def returned_mb(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FREE_BLOCKS, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    return int(done.stdout)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_freed_image_sized_blocks_leave_the_process_only_when_tuned() -> None:
    assert returned_mb("default") < 6  # glibc kept them in its heap
    assert returned_mb("tuned") >= 17  # each had its own mapping, returned at once
