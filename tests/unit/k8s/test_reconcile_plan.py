"""The operator's pure decisions: how ended Jobs are charged, which batches start where,
and what the status says."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s.decide import policy
from facescan_operator.k8s.observe import JobView, parse_quantity, view_jobs
from facescan_operator.k8s.reconcile import changed, status_of
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.k8s.status import unreachable, with_generation
from facescan_operator.loop import Observation, decide
from facescan_operator.planner import BatchPlan
from facescan_operator.settlement import WorkerOutcome, WorkerView, settle, unclaimed
from facescan_operator.sizing import CalibrationTable
from facescan_queue.models import GroupCount, LeaseInfo, QueueStatus, RecentOutcomes
from facescan_queue.types import ErrorType

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)


def job(
    name: str,
    outcome: WorkerOutcome,
    *,
    finished: datetime | None = None,
    pool: str = "cpu",
    step: int = 0,
) -> JobView:
    return JobView(name, step, 0, pool, 1024 * 2**20, outcome, outcome.value, finished)


def lease(owner: str, age: timedelta = timedelta(minutes=5)) -> LeaseInfo:
    return LeaseInfo(owner, 0, 0, NOW - age, NOW + timedelta(minutes=5), 3)


def test_oom_killed_job_charges_oom_disrupted_charges_nobody_others_crash() -> None:
    jobs = [
        job("a", WorkerOutcome.OOM_KILLED, finished=NOW),
        job("b", WorkerOutcome.DISRUPTED),
        job("c", WorkerOutcome.FAILED, finished=NOW),
        job("d", WorkerOutcome.SUCCEEDED, finished=NOW),
        job("e", WorkerOutcome.RUNNING),
    ]
    result = settle(jobs, [lease(n) for n in "abcde"], NOW, TTL)
    charges = {r.owner: r.charge for r in result.releases}
    assert charges == {"a": ErrorType.OOM, "b": None, "c": ErrorType.CRASH, "d": ErrorType.CRASH}
    assert result.forget == []  # settled first, deleted once past the TTL


def test_finished_jobs_are_deleted_after_their_ttl_once_settled() -> None:
    jobs = [
        job("old", WorkerOutcome.SUCCEEDED, finished=NOW - TTL - timedelta(seconds=1)),
        job("recent", WorkerOutcome.SUCCEEDED, finished=NOW - timedelta(seconds=5)),
        job("running", WorkerOutcome.RUNNING),
    ]
    assert settle(jobs, [], NOW, TTL).forget == ["old"]


def test_a_lease_whose_job_vanished_is_released_after_a_grace_period() -> None:
    result = settle([], [lease("gone"), lease("new", age=timedelta(seconds=5))], NOW, TTL)
    assert [(r.owner, r.charge) for r in result.releases] == [("gone", ErrorType.CRASH)]


def test_a_deleted_job_whose_pod_still_hands_its_image_back_is_not_vanished() -> None:
    """`kubectl delete job` removes the Job at once; its pod gets SIGTERM and hands its
    image back uncharged. Until that pod is gone its lease is not charged as a crash."""
    leases = [lease("deleted"), lease("gone")]
    result = settle([], leases, NOW, TTL, present={"deleted"})
    assert [(r.owner, r.charge) for r in result.releases] == [("gone", ErrorType.CRASH)]


def pod(job_name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"job-name": job_name}}, "status": status}


def job_manifest(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "facescan.io/step": "2",
                "facescan.io/size-class": "1",
                "facescan.io/pool": "gpu",
            },
        },
        "spec": {
            "template": {"spec": {"containers": [{"resources": {"limits": {"memory": "1536Mi"}}}]}}
        },
        "status": status,
    }


def terminated(code: int, reason: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "finishedAt": "2026-11-22T11:59:00Z",
                    }
                }
            }
        ]
    }


def test_pod_terminations_are_read_into_job_outcomes() -> None:
    views = {
        v.name: v
        for v in view_jobs(
            [job_manifest(n) for n in ("oom", "ok", "err", "pre", "run")],
            [
                pod("oom", **terminated(137, "OOMKilled")),
                pod("ok", **terminated(0, "Completed")),
                pod("err", **terminated(1, "Error")),
                pod(
                    "pre",
                    phase="Failed",
                    conditions=[
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "PreemptionByScheduler",
                        }
                    ],
                ),
                pod("run", phase="Running"),
            ],
        )
    }
    assert views["oom"].outcome is WorkerOutcome.OOM_KILLED
    assert views["ok"].outcome is WorkerOutcome.SUCCEEDED
    assert views["err"].outcome is WorkerOutcome.FAILED
    assert views["pre"].outcome is WorkerOutcome.DISRUPTED
    assert views["run"].outcome is WorkerOutcome.RUNNING
    assert views["oom"].memory_bytes == 1536 * 2**20
    assert (views["oom"].step, views["oom"].size_class, views["oom"].pool) == (2, 1, "gpu")
    assert views["ok"].finished_at == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)


def test_a_job_without_pods_is_judged_by_its_conditions() -> None:
    (view,) = view_jobs(
        [
            job_manifest(
                "x",
                conditions=[
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "lastTransitionTime": "2026-11-22T11:00:00Z",
                    }
                ],
            )
        ],
        [],
    )
    assert view.outcome is WorkerOutcome.FAILED
    assert view.detail == "DeadlineExceeded"


def test_quantities() -> None:
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1G") == 10**9
    assert parse_quantity("1048576") == 2**20


def spec(**extra: Any) -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "db"},
            "library": {"volume": {"emptyDir": {}}},
            "detector": {"image": "d"},
            **extra,
        }
    )


POOLS = {
    "nodePools": [
        {
            "name": "gpu",
            "models": ["cnn"],
            "gpuResourceName": "nvidia.com/gpu",
            "gpuCount": 1,
            "maxConcurrentJobs": 1,
            "maxMemoryMiB": 3000,
        },
        {"name": "cpu", "models": ["hog"]},
    ]
}


def launches(
    s: FaceScanSpec, groups: list[GroupCount], active: list[WorkerView], allowed: int | None
) -> list[tuple[BatchPlan, str]]:
    """The Jobs a tick of the loop launches for the spec, and their pools."""
    seen = Observation(NOW, active, [], groups, allowed)
    return [(x.batch, x.pool) for x in decide(policy(s, CalibrationTable.default()), seen).launches]


def test_batches_go_to_their_pools_within_each_pools_limits() -> None:
    s = spec(parallelism=6, batchSize=10, **POOLS)
    groups = [GroupCount(0, 0, 40), GroupCount(5, 0, 5)]
    chosen = launches(s, groups, [], None)
    pools = [pool for _, pool in chosen]
    assert pools.count("gpu") == 1  # maxConcurrentJobs
    assert pools[0] == "cpu"  # the later (hog) step first: OOM culprits go at once
    for batch, pool in chosen:
        if pool == "gpu":
            assert batch.memory_bytes <= 3000 * 2**20


def test_a_suspended_scan_starts_nothing_and_the_breaker_can_hold_it() -> None:
    groups = [GroupCount(0, 0, 40)]
    assert launches(spec(suspend=True), groups, [], None) == []
    assert launches(spec(), groups, [], 0) == []
    (probe,) = launches(spec(), groups, [], 1)
    assert probe[0].limit == 1


def test_running_jobs_count_against_parallelism() -> None:
    active = [job(f"j{i}", WorkerOutcome.RUNNING) for i in range(4)]
    assert launches(spec(parallelism=4), [GroupCount(0, 0, 100)], active, None) == []


def counts(**kw: int) -> QueueStatus:
    return QueueStatus(**kw)


def test_status_phases() -> None:
    closed = CircuitBreaker()
    done = counts(images=10, done=9, dead=1, faces=12)
    assert status_of(done, 0, False, closed, False, {}, NOW)["phase"] == "Completed"
    running = counts(images=10, done=2, pending=6, leased=2)
    assert status_of(running, 1, False, closed, True, {}, NOW)["phase"] == "Running"
    waiting = counts(images=10, done=8, pending=2, retrying=2)
    assert status_of(waiting, 0, False, closed, False, {}, NOW)["phase"] == "Waiting"
    assert status_of(running, 0, True, closed, True, {}, NOW)["phase"] == "Suspended"
    assert status_of(counts(), 0, False, closed, False, {}, NOW)["phase"] == "Pending"
    broken = CircuitBreaker()
    broken.observe(RecentOutcomes(finished=10, unavailable=9, failed=9, last_id=99), 0.0)
    status = status_of(running, 0, False, broken, True, {}, NOW)
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "unavailable" in degraded["message"]


def test_status_is_written_only_when_it_changed() -> None:
    closed = CircuitBreaker()
    c = counts(images=10, done=2, pending=8)
    first = status_of(c, 1, False, closed, True, {}, NOW)
    later = status_of(c, 1, False, closed, True, first, NOW + timedelta(minutes=1))
    assert changed(first, later) == {}  # lastTransitionTime kept while nothing flips
    more = status_of(counts(images=10, done=3, pending=7), 1, False, closed, True, first, NOW)
    assert set(changed(first, more)) == {"progress", "counts", "conditions"}


def test_status_and_conditions_carry_the_generation_they_were_computed_from() -> None:
    counts = QueueStatus(images=2, done=2, faces=3)
    status = status_of(counts, 0, False, CircuitBreaker(), False, {}, datetime.now(UTC))
    marked = with_generation(status, 7)
    assert marked["observedGeneration"] == 7
    assert {c["observedGeneration"] for c in marked["conditions"]} == {7}
    assert "observedGeneration" not in status  # the value it was given is left as it was
    assert with_generation(status, None) == status


def test_a_database_out_of_reach_degrades_only_that_facescan_s_status() -> None:
    now = datetime.now(UTC)
    counts = QueueStatus(images=4, done=2, pending=2, faces=3)
    before = status_of(counts, 1, False, CircuitBreaker(), True, {}, now)
    after = unreachable(before, "DatabaseUnavailable", "connection refused", now)
    assert after["phase"] == "Degraded"
    conditions = {c["type"]: c for c in after["conditions"]}
    degraded = conditions["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "DatabaseUnavailable")
    assert degraded["message"] == "connection refused"
    assert conditions["Ready"] == {c["type"]: c for c in before["conditions"]}["Ready"]
    assert "counts" not in after  # the last counts read stay as they were
    again = unreachable(before | after, "DatabaseUnavailable", "connection refused", now)
    assert again["conditions"] == after["conditions"]  # nothing to patch, no new Event


def test_batches_of_jobs_not_started_yet_are_spoken_for() -> None:
    """Runnable images less what waiting Jobs (no lease yet) will claim; a Job that has
    claimed its batch no longer counts (its images are not runnable any more)."""
    groups = [GroupCount(0, 1, 30), GroupCount(0, 2, 5), GroupCount(1, 1, 4)]
    waiting = replace(job("w", WorkerOutcome.RUNNING), size_class=1, images=25)
    small = replace(job("s", WorkerOutcome.RUNNING), size_class=2, images=25)
    claimed = replace(job("c", WorkerOutcome.RUNNING), size_class=1, images=25)
    assert unclaimed(groups, [waiting, small, claimed], leased={"c"}) == [
        GroupCount(0, 1, 5),
        GroupCount(1, 1, 4),
    ]
    assert unclaimed(groups, [], leased=set()) == groups
