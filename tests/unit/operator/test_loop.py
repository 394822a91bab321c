"""loop.decide: one tick's plan from a policy and an observation, tested with tables and
no runner at all; loop.apply: the plan carried out through a Runner port, in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from facescan_operator.loop import Launch, Observation, Plan, Policy, Pool, apply, decide
from facescan_operator.settlement import Release, WorkerOutcome, WorkerView
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue.defaults import CNN_CASCADE
from facescan_queue.models import GroupCount, LeaseInfo, Released
from facescan_queue.types import ErrorType

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = Policy(
    cascade=CNN_CASCADE, batch_size=10, workers=4, max_dimension=1280,
    calibration=CalibrationTable.default(),
)  # fmt: skip


def worker(
    name: str, outcome: WorkerOutcome = WorkerOutcome.RUNNING, *, step: int = 0, pool: str = "local"
) -> WorkerView:
    ended = None if outcome is WorkerOutcome.RUNNING else NOW
    return WorkerView(name, step, 1, pool, 512 * MIB, outcome, outcome.value, ended, 10)


def lease(owner: str, images: int, step: int = 0) -> LeaseInfo:
    return LeaseInfo(owner, step, 1, NOW - timedelta(minutes=1), NOW + timedelta(minutes=4), images)


def shape(plan: Plan) -> list[tuple[int, int, int, str]]:
    """(step, size class, images, pool) of each launch."""
    return [(x.batch.step, x.batch.size_class, x.batch.limit, x.pool) for x in plan.launches]


def per_step(plan: Plan) -> dict[int, int]:
    """The images launched at each cascade step."""
    steps: dict[int, int] = {}
    for x in plan.launches:
        steps[x.batch.step] = steps.get(x.batch.step, 0) + x.batch.limit
    return steps


@pytest.mark.parametrize(
    ("outcome", "charge", "launched"),
    [
        # the culprit at the next step at once, the 6 others of its batch at step 0
        (WorkerOutcome.OOM_KILLED, ErrorType.OOM, {1: 1, 0: 6}),
        # the image in progress waits for its retry; the 6 others go again
        (WorkerOutcome.FAILED, ErrorType.CRASH, {0: 6}),
        # nothing charged: the whole batch goes again
        (WorkerOutcome.DISRUPTED, None, {0: 7}),
    ],
)
def test_an_ended_worker_is_settled_and_its_images_planned_in_the_same_tick(
    outcome: WorkerOutcome, charge: ErrorType | None, launched: dict[int, int]
) -> None:
    seen = Observation(NOW, [worker("w", outcome)], [lease("w", 7)], [])
    plan = decide(POLICY, seen)
    assert [(r.owner, r.charge) for r in plan.releases] == [("w", charge)]
    assert per_step(plan) == launched
    assert len(plan.launches) <= POLICY.workers
    assert plan.runnable


def test_an_oom_at_the_last_step_moves_nothing_down() -> None:
    last = len(CNN_CASCADE) - 1
    seen = Observation(
        NOW, [worker("w", WorkerOutcome.OOM_KILLED, step=last)], [lease("w", 1, last)], []
    )
    plan = decide(POLICY, seen)
    assert [r.charge for r in plan.releases] == [ErrorType.OOM]
    assert plan.launches == ()
    assert not plan.runnable


def test_ended_workers_without_a_lease_are_forgotten_after_keep() -> None:
    done = worker("done", WorkerOutcome.SUCCEEDED)
    assert decide(POLICY, Observation(NOW, [done], [], [])).forget == ("done",)
    kept = Policy(**{**POLICY.__dict__, "keep": timedelta(minutes=10)})
    assert decide(kept, Observation(NOW, [done], [], [])).forget == ()


def test_waiting_workers_speak_for_their_batch_and_running_ones_take_a_slot() -> None:
    """Two workers not started yet will claim 20 of the 25 runnable images; the four
    slots hold three workers, so one more is launched, for the 5 left."""
    waiting = [worker("a"), worker("b")]
    running = worker("c")
    seen = Observation(NOW, [*waiting, running], [lease("c", 10)], [GroupCount(0, 1, 25)])
    assert shape(decide(POLICY, seen)) == [(0, 1, 5, "local")]


@pytest.mark.parametrize(
    ("allowed", "launched"),
    # 30 images over the 4 free slots; none; a probe of one image
    [(None, [(0, 1, 8, "local")] * 3 + [(0, 1, 6, "local")]), (0, []), (1, [(0, 1, 1, "local")])],
)
def test_the_circuit_breaker_limits_launches(
    allowed: int | None, launched: list[tuple[int, int, int, str]]
) -> None:
    plan = decide(POLICY, Observation(NOW, [], [], [GroupCount(0, 1, 30)], allowed))
    assert shape(plan) == launched
    assert plan.probe is (allowed == 1)


def test_a_suspended_library_settles_but_launches_nothing() -> None:
    suspended = Policy(**{**POLICY.__dict__, "suspend": True})
    seen = Observation(
        NOW, [worker("w", WorkerOutcome.FAILED)], [lease("w", 3)], [GroupCount(0, 1, 30)]
    )
    plan = decide(suspended, seen)
    assert [r.owner for r in plan.releases] == ["w"]
    assert plan.launches == ()


def test_batches_go_to_the_pool_serving_their_model_within_its_limits() -> None:
    pools = (
        Pool("gpu", frozenset({"cnn"}), max_workers=1, max_memory_bytes=700 * MIB),
        Pool("cpu", frozenset({"hog"})),
    )
    policy = Policy(**{**POLICY.__dict__, "pools": pools, "workers": 6})
    last = len(CNN_CASCADE) - 1  # hog
    seen = Observation(NOW, [], [], [GroupCount(0, 3, 40), GroupCount(last, 3, 5)])
    plan = decide(policy, seen)
    assert [x.pool for x in plan.launches] == ["cpu", "gpu"]  # hog first: culprits go at once
    (gpu,) = [x for x in plan.launches if x.pool == "gpu"]
    assert gpu.batch.memory_bytes == 700 * MIB  # capped at the pool's memory
    # a gpu Job already running: the pool is full, and its limit holds
    busy = Observation(NOW, [worker("g", pool="gpu")], [lease("g", 10)], seen.groups)
    assert [x.pool for x in decide(policy, busy).launches] == ["cpu"]


def test_the_plan_reads_as_what_it_does() -> None:
    seen = Observation(NOW, [worker("w", WorkerOutcome.OOM_KILLED)], [lease("w", 1)], [])
    lines = decide(POLICY, seen).lines()
    assert lines[0].startswith("release w: charge oom (killed for memory")
    assert lines[1].startswith("launch step 1 size class 1: up to 1 images, cnn@0.75")


class Recorder:
    """A Runner that records what it is asked, refusing one launch."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.launches = 0

    async def release(self, release: Release) -> Released:
        self.calls.append(f"release {release.owner}")
        return Released(release.owner, 7, 2)

    async def forget(self, worker: str) -> None:
        self.calls.append(f"forget {worker}")

    async def launch(self, launch: Launch) -> str:
        self.launches += 1
        if self.launches == 2:
            raise RuntimeError("quota exceeded")
        self.calls.append("launch")
        return f"job-{self.launches}"


async def test_apply_releases_before_it_launches_and_tries_every_launch() -> None:
    seen = Observation(
        NOW,
        [worker("w", WorkerOutcome.FAILED), worker("old", WorkerOutcome.SUCCEEDED)],
        [lease("w", 1)],
        [GroupCount(0, 1, 12)],
    )
    plan = decide(POLICY, seen)
    assert per_step(plan) == {0: 12}  # the crashed one's image waits for its retry
    runner = Recorder()
    done = await apply(plan, runner)
    assert runner.calls == ["release w", "forget old", "launch", "launch", "launch"]
    assert [name for name, _ in done.launched] == ["job-1", "job-3", "job-4"]
    assert isinstance(done.refused, RuntimeError)
    assert done.released[0][1].charged_image == 7
