"""Jobs whose pods cannot be created or run: how they are read, found, held and reported.

Pure: manifests as the API server returns them (kube-apiserver, Job controller, scheduler,
kubelet), no cluster and no database.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s.holds import (
    ALL_POOLS,
    DETECTOR_CANNOT_START,
    EVENT_MOVED_DOWN,
    EVENT_RECOVERED,
    EVENT_STUCK,
    Hold,
    Stuck,
    degraded,
    gate,
    holds_of,
    update_holds,
)
from facescan_operator.k8s.observe import JobView, PodTrouble, view_jobs
from facescan_operator.k8s.reconcile import changed, status_of
from facescan_operator.k8s.stuck import find
from facescan_operator.planner import BatchPlan
from facescan_operator.settlement import WorkerOutcome
from facescan_queue.models import QueueStatus, RecentOutcomes

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(minutes=5)
HOSTPATH = (
    'Error creating: pods "s-abc-x" is forbidden: violates PodSecurity "restricted:latest": '
    'restricted volume types (volume "library" uses restricted volume type "hostPath")'
)
NO_GPU = (
    "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint "
    "{nvidia.com/gpu: present}. preemption: 0/2 nodes are available: 2 Preemption is not "
    "helpful for scheduling."
)
NO_MEMORY = (
    "0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint "
    "{nvidia.com/gpu: present}. preemption: 0/2 nodes are available: 1 No preemption victims "
    "found for incoming pod, 1 Preemption is not helpful for scheduling."
)


def job(
    name: str,
    trouble: PodTrouble | None = None,
    *,
    pool: str = "gpu",
    step: int = 0,
    age: timedelta = timedelta(minutes=5),
    pods: int = 1,
    scheduled: bool = False,
    started_at: datetime | None = None,
    outcome: WorkerOutcome = WorkerOutcome.RUNNING,
    exit_code: int | None = None,
    message: str = "",
) -> JobView:
    return JobView(
        name,
        step,
        0,
        pool,
        2048 * 2**20,
        outcome,
        "",
        None,
        created_at=NOW - age,
        pods=pods,
        scheduled=scheduled,
        started_at=started_at,
        trouble=trouble,
        exit_code=exit_code,
        message=message,
    )


# --- reading the API's manifests ---------------------------------------------------------


def manifest(name: str, *, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": "2026-12-03T11:59:00Z",
            "labels": {"facescan.io/pool": "gpu"},
        },
        "spec": {
            "suspend": suspend,
            "template": {"spec": {"containers": [{"resources": {"limits": {"memory": "1Gi"}}}]}},
        },
        "status": {},
    }


def pod(job_name: str, node: str | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"batch.kubernetes.io/job-name": job_name}},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {
        "phase": "Pending",
        "containerStatuses": [{"state": {"waiting": {"reason": reason, "message": message}}}],
    }


UNSCHEDULED = {
    "phase": "Pending",
    "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_GPU}
    ],
}
RUNNING = {
    "phase": "Running",
    "conditions": [{"type": "PodScheduled", "status": "True"}],
    "containerStatuses": [{"state": {"running": {"startedAt": "2026-12-03T11:59:30Z"}}}],
}


@pytest.mark.parametrize(
    ("status", "node", "trouble", "scheduled", "started"),
    [
        (UNSCHEDULED, None, PodTrouble("Unschedulable", NO_GPU), False, None),
        (
            waiting("ImagePullBackOff", "Back-off"),
            "n1",
            PodTrouble("ImagePullBackOff", "Back-off"),
            True,
            None,
        ),
        (
            waiting("ErrImagePull", "not found"),
            "n1",
            PodTrouble("ErrImagePull", "not found"),
            True,
            None,
        ),
        (
            waiting("InvalidImageName", "bad"),
            "n1",
            PodTrouble("InvalidImageName", "bad"),
            True,
            None,
        ),
        (
            waiting("CreateContainerConfigError", 'secret "db" not found'),
            "n1",
            PodTrouble("CreateContainerConfigError", 'secret "db" not found'),
            True,
            None,
        ),
        (
            waiting("CreateContainerError", "x"),
            "n1",
            PodTrouble("CreateContainerError", "x"),
            True,
            None,
        ),
        (waiting("ContainerCreating"), "n1", None, True, None),
        (RUNNING, "n1", None, True, datetime(2026, 12, 3, 11, 59, 30, tzinfo=UTC)),
    ],
)
def test_a_pod_says_why_it_cannot_run(
    status: dict[str, Any],
    node: str | None,
    trouble: PodTrouble | None,
    scheduled: bool,
    started: datetime | None,
) -> None:
    (view,) = view_jobs([manifest("j")], [pod("j", node, **status)])
    assert (view.trouble, view.scheduled, view.started_at, view.pods) == (
        trouble,
        scheduled,
        started,
        1,
    )
    assert view.created_at == datetime(2026, 12, 3, 11, 59, tzinfo=UTC)
    assert not view.finished


def test_an_ended_pod_holds_no_node_and_a_suspended_job_expects_none() -> None:
    ended = {**RUNNING, "phase": "Succeeded"}
    views = view_jobs([manifest("a"), manifest("k", suspend=True)], [pod("a", "n1", **ended)])
    assert [(v.name, v.scheduled, v.suspended, v.pods) for v in views] == [
        ("a", False, False, 1),
        ("k", False, True, 0),
    ]


# --- which Jobs are stuck ----------------------------------------------------------------

CASES = [
    # (what the API reports, the Job's age, expected: stuck?, scope, move down)
    ("FailedCreate", HOSTPATH, timedelta(seconds=1), True, ALL_POOLS, False),
    ("CreateContainerConfigError", "no key", timedelta(seconds=1), True, ALL_POOLS, False),
    ("InvalidImageName", "bad ref", timedelta(seconds=1), True, "gpu", False),
    ("ImagePullBackOff", "Back-off", timedelta(seconds=1), True, "gpu", False),
    ("ErrImagePull", "not found", timedelta(seconds=30), False, None, False),
    ("ErrImagePull", "not found", timedelta(seconds=90), True, "gpu", False),
    ("CreateContainerError", "x", timedelta(seconds=30), False, None, False),
    ("CreateContainerError", "x", timedelta(seconds=90), True, "gpu", False),
    ("Unschedulable", NO_GPU, timedelta(seconds=30), False, None, False),
    ("Unschedulable", NO_GPU, timedelta(seconds=90), True, "gpu", False),
    ("Unschedulable", NO_MEMORY, timedelta(seconds=90), True, "gpu", True),
    ("ContainerCreating", "", timedelta(hours=1), False, None, False),
]


@pytest.mark.parametrize(("reason", "message", "age", "stuck", "scope", "move_down"), CASES)
def test_which_causes_make_a_job_stuck_and_when(
    reason: str,
    message: str,
    age: timedelta,
    stuck: bool,
    scope: str | None,
    move_down: bool,
) -> None:
    trouble = PodTrouble(reason, message)
    if reason == "FailedCreate":
        found = find([job("j", pods=0, age=age)], {"j": trouble}, NOW, cascade_steps=6)
    else:
        found = find([job("j", trouble, age=age)], {}, NOW, cascade_steps=6)
    expected = [Stuck("j", "gpu", reason, message, scope, move_down)] if scope else []
    assert found == expected
    assert bool(found) is stuck


def test_unschedulable_waits_while_our_own_jobs_hold_the_pools_nodes() -> None:
    blocked = job("wait", PodTrouble("Unschedulable", NO_MEMORY))
    busy = job("busy", scheduled=True)
    assert find([blocked, busy], {}, NOW, 6) == []
    elsewhere = job("cpu", scheduled=True, pool="cpu")
    assert [s.job for s in find([blocked, elsewhere], {}, NOW, 6)] == ["wait"]


def test_insufficient_memory_at_the_last_step_is_held_not_moved_down() -> None:
    (last,) = find([job("j", PodTrouble("Unschedulable", NO_MEMORY), step=5)], {}, NOW, 6)
    assert not last.move_down


def test_finished_suspended_and_podded_jobs_are_not_judged_by_events() -> None:
    refused = {n: PodTrouble("FailedCreate", HOSTPATH) for n in ("done", "pod", "susp")}
    jobs = [
        job("done", pods=0, outcome=WorkerOutcome.FAILED),
        job("pod", pods=1),  # its pod exists: an old FailedCreate is over
        JobView("susp", 0, 0, "gpu", 1, WorkerOutcome.RUNNING, "", None, suspended=True),
    ]
    assert find(jobs, refused, NOW, 6) == []


# --- holds, events, Degraded --------------------------------------------------------------


def refused_once(scope: str = "gpu", reason: str = "Unschedulable") -> list[Hold]:
    stuck = Stuck("j1", "gpu", reason, NO_GPU, scope)
    holds, events = update_holds([], [], [stuck], {"j1": 7}, ["gpu", "cpu"], NOW)
    assert [(kind, why) for kind, why, _ in events] == [("Warning", EVENT_STUCK)]
    assert "7 images back in the queue uncharged" in events[0][2]
    return holds


def test_a_refused_job_holds_back_its_pool_and_is_reported_once() -> None:
    (hold,) = refused_once()
    assert (hold.pool, hold.reason, hold.blocking) == ("gpu", "Unschedulable", True)
    assert hold.retry_at == NOW + timedelta(seconds=60)
    # the next tick sees the Job again (its deletion not yet done): its lease is gone
    stuck = Stuck("j1", "gpu", "Unschedulable", NO_GPU, "gpu")
    later, events = update_holds([hold], [], [stuck], {}, ["gpu"], NOW + timedelta(seconds=10))
    assert (later, events) == ([hold], [])


def test_each_further_refusal_doubles_the_wait_up_to_its_cap() -> None:
    holds = refused_once()
    waits = []
    for tick in range(1, 5):
        now = NOW + timedelta(minutes=tick * 10)
        stuck = Stuck(f"j{tick + 1}", "gpu", "Unschedulable", NO_GPU, "gpu")
        holds, _ = update_holds(holds, [], [stuck], {stuck.job: 1}, ["gpu"], now)
        waits.append((holds[0].retry_at - now).total_seconds())
    assert waits == [120, 240, 300, 300]


def test_a_job_that_starts_after_the_refusal_ends_the_hold() -> None:
    holds = refused_once()
    before = job("old", pool="gpu", started_at=NOW - timedelta(seconds=5))
    kept, events = update_holds(holds, [before], [], {}, ["gpu"], NOW + timedelta(minutes=2))
    assert (kept, events) == (holds, [])
    other_pool = job("hog", pool="cpu", started_at=NOW + timedelta(seconds=70))
    assert update_holds(holds, [other_pool], [], {}, ["gpu"], NOW)[0] == holds
    probe = job("probe", pool="gpu", started_at=NOW + timedelta(seconds=70))
    kept, events = update_holds(holds, [probe], [], {}, ["gpu"], NOW + timedelta(minutes=2))
    assert kept == []
    assert [why for _, why, _ in events] == [EVENT_RECOVERED]


def test_a_batch_too_large_for_every_node_moves_down_without_holding_back() -> None:
    stuck = Stuck("big", "gpu", "Unschedulable", NO_MEMORY, "gpu", move_down=True)
    (hold,), events = update_holds([], [], [stuck], {"big": 25}, ["gpu"], NOW)
    assert not hold.blocking
    assert [(kind, why) for kind, why, _ in events] == [("Warning", EVENT_MOVED_DOWN)]
    assert gate([(batch(), "gpu")], [hold], [], NOW) == [(batch(), "gpu")]
    assert degraded(None, [hold]) == ("Unschedulable", hold.describe())


def test_holds_of_a_pool_that_left_the_spec_are_dropped() -> None:
    assert update_holds(refused_once(), [], [], {}, ["cpu"], NOW)[0] == []


def batch(step: int = 0) -> BatchPlan:
    return BatchPlan(step, 0, 10, "cnn", 1.0, 2**30)


def test_no_job_starts_in_a_held_scope_before_its_retry_then_one_at_a_time() -> None:
    (hold,) = refused_once()
    chosen = [(batch(0), "gpu"), (batch(1), "gpu"), (batch(5), "cpu")]
    assert gate(chosen, [hold], [], NOW) == [(batch(5), "cpu")]
    retry = hold.retry_at
    assert gate(chosen, [hold], [], retry) == [(batch(0), "gpu"), (batch(5), "cpu")]
    probing = [job("probe", pool="gpu")]
    assert gate(chosen, [hold], probing, retry) == [(batch(5), "cpu")]


def test_a_hold_of_every_pool_stops_every_pool() -> None:
    (hold,) = refused_once(ALL_POOLS, "FailedCreate")
    chosen = [(batch(0), "gpu"), (batch(5), "cpu")]
    assert gate(chosen, [hold], [], NOW) == []
    assert gate(chosen, [hold], [], hold.retry_at) == [(batch(0), "gpu")]


def test_degraded_names_the_most_important_cause_first() -> None:
    (pool,) = refused_once()
    (everything,) = refused_once(ALL_POOLS, "FailedCreate")
    moved = Hold("cpu", "Unschedulable", NO_MEMORY, "m", NOW, NOW, 0, False)
    worst = degraded("3 of 5 attempts failed as unavailable", [moved, pool, everything])
    assert worst is not None
    reason, message = worst
    assert reason == "FailedCreate"
    assert message.startswith(NO_GPU)
    assert message.endswith("(also: BreakerOpen, Unschedulable, Unschedulable)")
    assert degraded("outage", [moved, pool]) == (
        "BreakerOpen",
        "outage (also: Unschedulable, Unschedulable)",
    )
    assert degraded(None, []) is None


# --- the FaceScan's status ----------------------------------------------------------------


def test_a_held_scan_is_degraded_with_the_apis_reason_and_keeps_its_holds() -> None:
    counts = QueueStatus(images=10, pending=10)
    (hold,) = refused_once(ALL_POOLS, "FailedCreate")
    status = status_of(counts, 0, False, CircuitBreaker(), True, {}, NOW, [hold])
    assert status["phase"] == "Degraded"
    cond = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (cond["status"], cond["reason"]) == ("True", "FailedCreate")
    assert cond["message"] == hold.describe()
    assert holds_of(status) == [hold]
    # written once: the next tick with the same hold changes nothing
    same = status_of(counts, 0, False, CircuitBreaker(), True, status, NOW, [hold])
    assert changed(status, same) == {}
    over = status_of(counts, 1, False, CircuitBreaker(), True, status, NOW)
    assert set(changed(status, over)) == {"phase", "activeJobs", "conditions", "holds"}


def test_the_breaker_and_a_hold_share_one_degraded_condition() -> None:
    broken = CircuitBreaker()
    broken.observe(RecentOutcomes(finished=10, unavailable=9, failed=9, last_id=9), 0.0)
    (hold,) = refused_once()
    counts = QueueStatus(images=10, pending=10)
    status = status_of(counts, 0, False, broken, True, {}, NOW, [hold])
    (cond,) = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert cond["reason"] == "BreakerOpen"
    assert cond["message"].endswith("(also: Unschedulable)")
    healthy = status_of(counts, 1, False, CircuitBreaker(), True, status, NOW)
    (cond,) = [c for c in healthy["conditions"] if c["type"] == "Degraded"]
    assert (cond["status"], cond["reason"], healthy["phase"]) == ("False", "Healthy", "Running")


# --- a detector that cannot start -------------------------------------------------------

CANNOT_START_LOG = (
    "2026-12-03 12:00:01,250 INFO facescan.detector: claimed 3 images of t/photos\n"
    "2026-12-03 12:00:01,900 ERROR facescan.detector: detector cannot start: InsightFace "
    "model directory /models does not exist\n"
)


def cannot_start(name: str, **kw: Any) -> JobView:
    kw.setdefault("started_at", NOW - timedelta(seconds=3))
    return job(name, outcome=WorkerOutcome.FAILED, exit_code=2, message=CANNOT_START_LOG, **kw)


def test_a_detector_that_cannot_start_makes_its_job_stuck_with_its_last_words() -> None:
    crashed = job("crash", outcome=WorkerOutcome.FAILED, exit_code=1, message="Traceback")
    gone = replace(cannot_start("deleting"), deleting=True)
    (found,) = find([cannot_start("j1"), crashed, gone], {}, NOW, 6)
    assert (found.job, found.reason, found.scope) == ("j1", DETECTOR_CANNOT_START, "gpu")
    assert found.message == (
        "detector cannot start: InsightFace model directory /models does not exist"
    )
    assert not found.move_down


def test_a_cannot_start_hold_ends_only_when_a_later_job_ends_otherwise() -> None:
    stuck = Stuck("j1", "gpu", DETECTOR_CANNOT_START, "detector cannot start: x", "gpu")
    (hold,), events = update_holds([], [], [stuck], {"j1": 0}, ["gpu"], NOW)
    assert hold.retry_at == NOW + timedelta(seconds=60)
    assert "nothing ran, its images stay in the queue uncharged" in events[0][2]
    later = NOW + timedelta(seconds=70)
    probe = job("probe", started_at=NOW + timedelta(seconds=65))
    # its pod running proves nothing: the detector exits 2 seconds after it starts
    assert update_holds([hold], [probe], [], {}, ["gpu"], later) == ([hold], [])
    failed = cannot_start("probe", started_at=NOW + timedelta(seconds=65))
    assert update_holds([hold], [failed], [], {}, ["gpu"], later) == ([hold], [])
    done = replace(probe, outcome=WorkerOutcome.SUCCEEDED, exit_code=0)
    kept, events = update_holds([hold], [done], [], {}, ["gpu"], later)
    assert kept == []
    assert [why for _, why, _ in events] == [EVENT_RECOVERED]
