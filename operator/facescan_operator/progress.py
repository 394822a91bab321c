"""The progress `facescan scan` shows on stderr while it detects, read from the queue's
counters each tick of the local runner (scanning.py starts it)."""

from __future__ import annotations

import sys
import time

from facescan_operator.commands import plural, sum_status
from facescan_queue.repository import Queue


class Progress:
    """Progress on stderr, from the counters: on a terminal a bar redrawn each tick with
    the rate and the time left; otherwise a plain line every ``every_s`` seconds."""

    def __init__(
        self, queue: Queue, libraries: list[str], terminal: bool, every_s: float | None
    ) -> None:
        self.queue, self.libraries, self.drawn = queue, libraries, False
        self.terminal, self.every_s = terminal, every_s
        self.started = time.monotonic()
        self.last_line = self.started
        self.first_finished: int | None = None

    async def update(self) -> None:
        now = time.monotonic()
        if not self.terminal and (self.every_s is None or now - self.last_line < self.every_s):
            return
        t = sum_status([await self.queue.status(name) for name in self.libraries])
        finished = t.done + t.dead
        if self.first_finished is None:
            self.first_finished = finished  # done before this scan: not in the rate
        elapsed = now - self.started
        rate = (finished - self.first_finished) / elapsed if elapsed > 0 else 0.0
        left = t.pending + t.leased
        eta = _duration(left / rate) if rate > 0 else "?"
        counts = (
            f"{finished}/{t.images} finished, {t.done} done, {plural(t.faces, 'face')}, "
            f"{t.leased} in progress, {t.retrying} retrying, {t.dead} dead, "
            f"{rate:.1f} images/s, {eta} left"
        )
        if self.terminal:
            width = 30
            filled = int(width * finished / t.images) if t.images else width
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {counts}   ")
            self.drawn = True
        else:
            sys.stderr.write(f"progress: {counts}\n")
            self.last_line = now
        sys.stderr.flush()

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def _duration(seconds: float) -> str:
    """'42 s', '3 min', '2 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"
