"""The circuit breaker: closed -> open on an outage -> half-open (one probe) -> closed or
open again with a longer cool-down. Time is passed in; no I/O."""

from __future__ import annotations

from facescan_operator.breaker import BreakerState, CircuitBreaker
from facescan_queue.models import RecentOutcomes


def _state(breaker: CircuitBreaker) -> BreakerState:
    """The state, read through a call (so that the type checker does not narrow it)."""
    return breaker.state


NONE = RecentOutcomes(finished=0, unavailable=0, failed=0, last_id=0)


def _outcomes(
    finished: int, unavailable: int, *, failed: int | None = None, last_id: int = 100
) -> RecentOutcomes:
    return RecentOutcomes(finished, unavailable, unavailable if failed is None else failed, last_id)


def _opened(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold=0.5, min_samples=5, cooldown_s=15.0, max_cooldown_s=600.0)
    breaker.observe(_outcomes(10, 6, last_id=40), now)
    assert _state(breaker) is BreakerState.OPEN
    return breaker


def test_starts_closed_without_limit() -> None:
    breaker = CircuitBreaker()
    breaker.observe(NONE, 0.0)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allowed(0.0) is None


def test_opens_when_the_unavailable_share_reaches_the_threshold() -> None:
    breaker = CircuitBreaker(threshold=0.5, min_samples=5)
    breaker.observe(_outcomes(10, 5, last_id=77), 3.0)
    assert _state(breaker) is BreakerState.OPEN
    assert "5 of the last 10" in breaker.reason
    assert breaker.after_id == 77
    assert breaker.allowed(3.0) == 0


def test_stays_closed_below_the_threshold() -> None:
    breaker = CircuitBreaker(threshold=0.5, min_samples=5)
    breaker.observe(_outcomes(10, 4), 0.0)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allowed(0.0) is None


def test_stays_closed_with_too_few_samples_even_if_all_unavailable() -> None:
    breaker = CircuitBreaker(threshold=0.5, min_samples=5)
    breaker.observe(_outcomes(4, 4), 0.0)
    assert _state(breaker) is BreakerState.CLOSED
    breaker.observe(_outcomes(5, 5), 1.0)
    assert _state(breaker) is BreakerState.OPEN


def test_decode_failures_are_the_images_fault_and_keep_it_closed() -> None:
    breaker = CircuitBreaker()
    breaker.observe(_outcomes(50, 0, failed=50), 0.0)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allowed(0.0) is None


def test_open_allows_nothing_until_the_cool_down_has_passed() -> None:
    breaker = _opened(now=100.0)
    assert breaker.allowed(100.0) == 0
    assert breaker.allowed(114.9) == 0
    assert _state(breaker) is BreakerState.OPEN


def test_after_the_cool_down_exactly_one_probe_is_allowed() -> None:
    breaker = _opened(now=100.0)
    assert breaker.allowed(115.0) == 1
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allowed(115.5) == 1  # nothing started yet: still one
    breaker.probe_started()
    assert breaker.allowed(116.0) == 0
    assert breaker.allowed(500.0) == 0


def test_half_open_without_a_finished_probe_stays_half_open() -> None:
    breaker = _opened(now=0.0)
    breaker.allowed(15.0)
    breaker.probe_started()
    breaker.observe(NONE, 16.0)
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allowed(16.0) == 0


def test_a_probe_that_is_not_unavailable_closes_it() -> None:
    breaker = _opened(now=0.0)
    breaker.allowed(15.0)
    breaker.probe_started()
    breaker.observe(_outcomes(1, 0, last_id=41), 20.0)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.reason == ""
    assert breaker.after_id == 41
    assert breaker.allowed(20.0) is None


def test_a_probe_that_failed_for_its_image_still_closes_it() -> None:
    breaker = _opened(now=0.0)
    breaker.allowed(15.0)
    breaker.probe_started()
    breaker.observe(_outcomes(1, 0, failed=1, last_id=41), 20.0)
    assert _state(breaker) is BreakerState.CLOSED


def test_a_probe_that_is_unavailable_reopens_with_a_doubled_cool_down() -> None:
    breaker = _opened(now=0.0)
    breaker.allowed(15.0)
    breaker.probe_started()
    breaker.observe(_outcomes(1, 1, last_id=41), 20.0)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason.startswith("probe failed")
    assert breaker.after_id == 41
    assert breaker.allowed(20.0 + 29.9) == 0
    assert breaker.allowed(20.0 + 30.0) == 1
    # and again: 60 s
    breaker.probe_started()
    breaker.observe(_outcomes(1, 1, last_id=42), 60.0)
    assert breaker.allowed(60.0 + 59.9) == 0
    assert breaker.allowed(60.0 + 60.0) == 1


def test_the_cool_down_is_capped() -> None:
    breaker = CircuitBreaker(cooldown_s=100.0, max_cooldown_s=150.0)
    breaker.observe(_outcomes(10, 10), 0.0)
    now = 0.0
    for _ in range(3):
        now += 1000.0
        assert breaker.allowed(now) == 1
        breaker.probe_started()
        breaker.observe(_outcomes(1, 1), now)
    assert breaker.allowed(now + 149.0) == 0
    assert breaker.allowed(now + 150.0) == 1


def test_a_closed_breaker_starts_again_from_the_first_cool_down() -> None:
    breaker = _opened(now=0.0)
    breaker.allowed(15.0)
    breaker.probe_started()
    breaker.observe(_outcomes(1, 1, last_id=41), 15.0)  # 30 s now
    breaker.allowed(45.0)
    breaker.probe_started()
    breaker.observe(_outcomes(1, 0, last_id=42), 46.0)
    assert _state(breaker) is BreakerState.CLOSED
    breaker.observe(_outcomes(10, 10, last_id=60), 100.0)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.allowed(114.0) == 0
    assert breaker.allowed(115.0) == 1


def test_open_ignores_new_outcomes_until_it_probes() -> None:
    breaker = _opened(now=0.0)
    breaker.observe(_outcomes(3, 0, last_id=50), 1.0)
    assert _state(breaker) is BreakerState.OPEN


def test_database_down_opens_it_and_database_up_lets_a_probe_through_at_once() -> None:
    breaker = CircuitBreaker(cooldown_s=15.0)
    breaker.database_down("connection refused", 10.0)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason == "database unavailable: connection refused"
    assert breaker.allowed(11.0) == 0
    breaker.database_up()
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allowed(11.0) == 1
    breaker.probe_started()
    assert breaker.allowed(11.0) == 0


def test_database_down_while_open_keeps_the_first_reason_and_time() -> None:
    breaker = _opened(now=0.0)
    reason = breaker.reason
    breaker.database_down("gone", 10.0)
    assert breaker.reason == reason
    assert breaker.allowed(15.0) == 1  # cool-down counted from 0, not 10


def test_database_up_does_not_skip_the_cool_down_of_an_image_outage() -> None:
    breaker = _opened(now=0.0)
    breaker.database_up()
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.allowed(1.0) == 0


def test_database_up_when_closed_changes_nothing() -> None:
    breaker = CircuitBreaker()
    breaker.database_up()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allowed(0.0) is None


def test_database_down_without_database_up_probes_after_the_cool_down() -> None:
    breaker = CircuitBreaker(cooldown_s=15.0)
    breaker.database_down("refused", 0.0)
    assert breaker.allowed(14.0) == 0
    assert breaker.allowed(15.0) == 1


def test_after_a_database_outage_the_probe_is_judged_by_later_attempts_only() -> None:
    breaker = CircuitBreaker()
    breaker.observe(_outcomes(10, 0, last_id=40), 0.0)  # healthy history
    breaker.database_down("refused", 1.0)
    breaker.database_up()
    assert breaker.allowed(2.0) == 1
    breaker.probe_started()
    # the runner reads the attempts after after_id: those of before the outage must not count
    assert breaker.after_id >= 40


def test_a_probe_without_an_outcome_is_retried_after_the_cool_down() -> None:
    breaker = _opened(now=0.0)
    assert breaker.allowed(15.0) == 1
    breaker.probe_started()
    breaker.observe(NONE, 16.0)
    assert breaker.allowed(15.0 + 3600.0) == 1
