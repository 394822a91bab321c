"""The C allocator's settings for a detector process, so that its peak memory is what
its images need and not what glibc keeps.

``facescan-detector run`` calls :func:`tune_malloc` first. By default glibc serves a
large block (an image, a pyramid level of dlib's HOG, a decode buffer) from a mapping of
its own only until one is freed; from then on it raises that threshold to the freed
block's size and carves such blocks from its heaps, where freed space stays counted in
the process's memory and fragments between images of different sizes. A fixed
threshold keeps every block of 1 MiB or more a mapping of its own, returned to the
system when freed: a HOG process at 1280 px peaks about 25 MB lower
(bench/detector_bench.py), at no measurable cost in speed. The heaps are also limited
to two (``MALLOC_ARENA_MAX=2``, which the runners set in the environment as well), one
per busy thread rather than eight per core.

Elsewhere than glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 20
"""Blocks of this many bytes or more get a mapping of their own, freed at once."""

ARENA_MAX = 2

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """Sets glibc's mmap threshold and arena limit; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_ARENA_MAX, ARENA_MAX)
    )
    log.debug("glibc mallopt: mmap threshold %d, arenas %d: %s", MMAP_THRESHOLD, ARENA_MAX, done)
    return done
