"""The circuit breaker: stops starting workers while failures are not the images' fault.

Fed by the reconcile loop (local runner and operator) with the outcomes of recent
attempts (``facescan.recent_outcomes``) and with database outages it meets itself. When
most recent attempts failed as ``unavailable`` (database, mount, GPU down) it opens: no
new workers, so a dead mount cannot turn into thousands of failure rows. After a
cool-down it lets one probe batch of one image through; a probe that is not
``unavailable`` closes it, another outage reopens it with a longer cool-down.
Pure: time is passed in, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from facescan_queue.models import RecentOutcomes


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class CircuitBreaker:
    """Closed -> open (outage) -> half-open (one probe) -> closed or open again."""

    threshold: float = 0.5
    """Share of unavailable among recent finished attempts that opens the breaker."""
    min_samples: int = 5
    """Finished attempts needed before the share means anything."""
    window: int = 50
    """How many recent attempts are read."""
    cooldown_s: float = 15.0
    """First wait before a probe; doubles at each failed probe."""
    max_cooldown_s: float = 600.0
    probe_timeout_s: float = 600.0
    """A probe with no finished attempt after this long (its worker died before starting
    an image, its Job was never scheduled) is given up and another one is let through."""

    state: BreakerState = BreakerState.CLOSED
    reason: str = ""
    after_id: int = 0
    """Attempts up to this id are already judged."""
    _opened_at: float = 0.0
    _current_cooldown: float = 0.0
    _probing: bool = False
    _probe_offered_at: float = 0.0
    _seen_id: int = 0
    """The newest attempt observed: an outage the control plane meets itself is judged
    from here on, not by the attempts that finished before it."""

    def observe(self, outcomes: RecentOutcomes, now: float) -> None:
        """Judges the attempts finished after ``after_id``."""
        self._seen_id = max(self._seen_id, outcomes.last_id)
        if self.state is BreakerState.CLOSED:
            if outcomes.finished >= self.min_samples and (
                outcomes.unavailable >= self.threshold * outcomes.finished
            ):
                self._open(
                    f"{outcomes.unavailable} of the last {outcomes.finished} attempts failed "
                    "as unavailable (database, library mount or GPU down)",
                    now,
                    outcomes.last_id,
                )
        elif self.state is BreakerState.HALF_OPEN and self._probing and outcomes.finished:
            if outcomes.unavailable:
                self._open(f"probe failed: {self.reason}", now, outcomes.last_id, longer=True)
            else:
                self.state, self.reason, self._probing = BreakerState.CLOSED, "", False
                self.after_id = outcomes.last_id
                self._current_cooldown = 0.0

    def database_down(self, error: str, now: float) -> None:
        """The control plane itself cannot reach the database."""
        if self.state is not BreakerState.OPEN:
            self._open(f"database unavailable: {error}", now, max(self.after_id, self._seen_id))

    def database_up(self) -> None:
        """The database answers again: probe at once rather than wait the cool-down."""
        if self.state is BreakerState.OPEN and self.reason.startswith("database unavailable"):
            self.state, self._probing = BreakerState.HALF_OPEN, False

    def allowed(self, now: float) -> int | None:
        """How many new batches may start: None for no limit, 0 for none, 1 for a probe."""
        if self.state is BreakerState.OPEN and now - self._opened_at >= self._current_cooldown:
            self.state, self._probing = BreakerState.HALF_OPEN, False
        if self.state is BreakerState.CLOSED:
            return None
        if (
            self.state is BreakerState.HALF_OPEN
            and self._probing
            and now - self._probe_offered_at >= self.probe_timeout_s
        ):
            self._probing = False  # the probe never reported: try another
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probe_offered_at = now
            return 1
        return 0

    def probe_started(self) -> None:
        self._probing = True

    def _open(self, reason: str, now: float, last_id: int, *, longer: bool = False) -> None:
        self.state, self.reason, self._opened_at = BreakerState.OPEN, reason, now
        self.after_id, self._probing = last_id, False
        self._current_cooldown = (
            min(self._current_cooldown * 2, self.max_cooldown_s)
            if longer and self._current_cooldown
            else self.cooldown_s
        )
