"""Waiting out a database outage: the one backoff of every long-running caller of the
queue (the detector's connect and calls, the local runner's ticks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from facescan_queue.errors import DatabaseUnavailable

T = TypeVar("T")


async def wait_out(
    call: Callable[[], Awaitable[T]],
    *,
    on_wait: Callable[[float, DatabaseUnavailable], object],
    patience_s: float | None = None,
    first_s: float = 1.0,
    cap_s: float = 30.0,
) -> T:
    """``call()``, retried while the database is unavailable: waits ``first_s``, then
    twice as long each time up to ``cap_s``, telling ``on_wait(delay, error)`` first.
    Raises the last DatabaseUnavailable once the next wait would end past
    ``patience_s`` (None: waits for ever)."""
    deadline = None if patience_s is None else time.monotonic() + patience_s
    delay = first_s
    while True:
        try:
            return await call()
        except DatabaseUnavailable as exc:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            on_wait(delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap_s)
