"""planner.plan: which batches to claim now, of what size and memory. Pure: no database."""

from __future__ import annotations

import pytest

from facescan_operator.planner import BatchPlan, Capacity, PlanSettings, RunningBatch, plan
from facescan_operator.sizing import MIB, CalibrationTable, memory_bytes
from facescan_queue.defaults import CNN_CASCADE
from facescan_queue.models import GroupCount

TABLE = CalibrationTable.default()


def _settings(
    batch_size: int = 25, cascade: tuple[tuple[str, float], ...] = CNN_CASCADE
) -> PlanSettings:
    return PlanSettings(
        cascade=cascade, batch_size=batch_size, max_dimension=1280, calibration=TABLE
    )


def _need(model: str, size_class: int, scale: float = 1.0) -> int:
    return memory_bytes(TABLE, model, size_class, 1280, scale)


def _running(n: int, memory: int = 512 * MIB) -> list[RunningBatch]:
    return [RunningBatch(f"w{i}", 0, 0, memory) for i in range(n)]


def _shape(plans: list[BatchPlan]) -> list[tuple[int, int, int]]:
    return [(p.step, p.size_class, p.limit) for p in plans]


def test_nothing_runnable_plans_nothing() -> None:
    assert plan([], [], Capacity(workers=4), _settings()) == []


def test_later_cascade_steps_go_first_then_smaller_size_classes() -> None:
    groups = [
        GroupCount(0, 1, 1),
        GroupCount(0, 0, 1),
        GroupCount(2, 3, 1),
        GroupCount(5, 0, 1),
        GroupCount(2, 1, 1),
    ]
    plans = plan(groups, [], Capacity(workers=8), _settings())
    assert [(p.step, p.size_class) for p in plans] == [(5, 0), (2, 1), (2, 3), (0, 0), (0, 1)]


def test_only_as_many_batches_as_free_workers_in_priority_order() -> None:
    groups = [GroupCount(0, 0, 1), GroupCount(1, 0, 1), GroupCount(3, 2, 1)]
    plans = plan(groups, [], Capacity(workers=2), _settings())
    assert [(p.step, p.size_class) for p in plans] == [(3, 2), (1, 0)]


def test_ten_images_on_four_workers_run_as_three_three_three_one() -> None:
    plans = plan([GroupCount(0, 0, 10)], [], Capacity(workers=4), _settings())
    assert [p.limit for p in plans] == [3, 3, 3, 1]


def test_batches_never_exceed_batch_size() -> None:
    plans = plan([GroupCount(0, 0, 100)], [], Capacity(workers=2), _settings(batch_size=25))
    assert [p.limit for p in plans] == [25, 25]


def test_one_worker_takes_one_full_batch() -> None:
    plans = plan([GroupCount(0, 0, 7)], [], Capacity(workers=1), _settings(batch_size=25))
    assert _shape(plans) == [(0, 0, 7)]


def test_split_is_across_all_groups_runnable_images() -> None:
    groups = [GroupCount(1, 0, 1), GroupCount(0, 0, 9)]
    plans = plan(groups, [], Capacity(workers=4), _settings())
    assert _shape(plans) == [(1, 0, 1), (0, 0, 3), (0, 0, 3), (0, 0, 3)]


def test_running_workers_take_slots() -> None:
    groups = [GroupCount(0, 0, 10)]
    assert [p.limit for p in plan(groups, _running(2), Capacity(workers=4), _settings())] == [5, 5]
    assert plan(groups, _running(4), Capacity(workers=4), _settings()) == []
    assert plan(groups, _running(5), Capacity(workers=4), _settings()) == []


def test_breaker_allowed_none_is_no_limit() -> None:
    plans = plan([GroupCount(0, 0, 10)], [], Capacity(workers=4), _settings(), allowed=None)
    assert len(plans) == 4


def test_breaker_allowed_zero_plans_nothing() -> None:
    assert plan([GroupCount(0, 0, 10)], [], Capacity(workers=4), _settings(), allowed=0) == []


def test_breaker_probe_is_a_single_batch_of_one_image() -> None:
    groups = [GroupCount(0, 0, 10), GroupCount(2, 1, 5)]
    plans = plan(groups, [], Capacity(workers=4), _settings(), allowed=1)
    assert _shape(plans) == [(2, 1, 1)]


def test_probe_waits_while_every_worker_is_busy() -> None:
    plans = plan([GroupCount(0, 0, 10)], _running(2), Capacity(workers=2), _settings(), allowed=1)
    assert plans == []


def test_batch_memory_comes_from_sizing_of_its_step_and_size_class() -> None:
    groups = [GroupCount(0, 1, 1), GroupCount(2, 0, 1), GroupCount(5, 3, 1)]
    plans = plan(groups, [], Capacity(workers=3), _settings())
    assert [(p.model, p.scale, p.memory_bytes) for p in plans] == [
        ("hog", 1.0, _need("hog", 3)),
        ("cnn", 0.5, _need("cnn", 0, 0.5)),
        ("cnn", 1.0, _need("cnn", 1)),
    ]


def test_memory_budget_stops_extra_batches() -> None:
    need = _need("cnn", 0)
    capacity = Capacity(workers=4, memory_bytes=2 * need + need // 2)
    plans = plan([GroupCount(0, 0, 40)], [], capacity, _settings())
    assert len(plans) == 2
    assert all(p.memory_bytes == need for p in plans)


def test_running_workers_memory_counts_against_the_budget() -> None:
    need = _need("cnn", 0)
    capacity = Capacity(workers=4, memory_bytes=3 * need)
    plans = plan([GroupCount(0, 0, 40)], _running(1, memory=2 * need), capacity, _settings())
    assert len(plans) == 1


def test_one_batch_always_runs_when_nothing_is_running_even_over_budget() -> None:
    capacity = Capacity(workers=4, memory_bytes=64 * MIB)
    plans = plan([GroupCount(0, 3, 10)], [], capacity, _settings())
    assert len(plans) == 1
    assert plans[0].memory_bytes == _need("cnn", 3)


def test_nothing_starts_over_budget_while_something_runs() -> None:
    capacity = Capacity(workers=4, memory_bytes=_need("cnn", 3))
    running = _running(1, memory=_need("cnn", 3))
    assert plan([GroupCount(0, 3, 10)], running, capacity, _settings()) == []


def test_a_group_that_does_not_fit_lets_a_smaller_later_one_through() -> None:
    small, large = _need("hog", 0), _need("cnn", 3)
    assert small < large
    capacity = Capacity(workers=4, memory_bytes=small + small // 2)
    groups = [GroupCount(0, 3, 2), GroupCount(5, 0, 1)]
    plans = plan(groups, _running(1, memory=0), capacity, _settings())
    assert _shape(plans) == [(5, 0, 1)]


def test_worker_memory_cap_caps_each_batch() -> None:
    cap = 700 * MIB
    assert _need("cnn", 3) > cap > _need("hog", 0)
    groups = [GroupCount(5, 0, 1), GroupCount(0, 3, 1)]
    plans = plan(groups, [], Capacity(workers=2, worker_memory_cap=cap), _settings())
    assert [p.memory_bytes for p in plans] == [_need("hog", 0), cap]


def test_capped_memory_is_what_the_budget_is_charged() -> None:
    cap = 700 * MIB
    capacity = Capacity(workers=4, memory_bytes=2 * cap, worker_memory_cap=cap)
    plans = plan([GroupCount(0, 3, 40)], [], capacity, _settings())
    assert len(plans) == 2


def test_step_beyond_the_cascade_is_clamped_to_its_last_step() -> None:
    plans = plan([GroupCount(9, 0, 2)], [], Capacity(workers=1), _settings())
    assert len(plans) == 1
    assert (plans[0].step, plans[0].model, plans[0].scale) == (9, "hog", 1.0)
    assert plans[0].memory_bytes == _need("hog", 0)


def test_step_beyond_a_one_step_cascade_uses_that_step() -> None:
    plans = plan([GroupCount(3, 1, 1)], [], Capacity(workers=1), _settings(cascade=(("hog", 1.0),)))
    assert (plans[0].model, plans[0].scale) == ("hog", 1.0)


@pytest.mark.parametrize(
    ("runnable", "workers", "batch_size", "expected"),
    [
        (1, 4, 25, [1]),
        (4, 4, 25, [1, 1, 1, 1]),
        (5, 4, 25, [2, 2, 1]),
        (8, 4, 25, [2, 2, 2, 2]),
        (9, 4, 2, [2, 2, 2, 2]),
        (100, 3, 25, [25, 25, 25]),
        (30, 3, 25, [10, 10, 10]),
    ],
)
def test_split_of_one_group(
    runnable: int, workers: int, batch_size: int, expected: list[int]
) -> None:
    plans = plan([GroupCount(0, 0, runnable)], [], Capacity(workers=workers), _settings(batch_size))
    assert [p.limit for p in plans] == expected
    assert sum(p.limit for p in plans) <= runnable
