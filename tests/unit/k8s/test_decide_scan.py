"""decide_scan: a FaceScan's whole tick as a value, from tables of observations, with no
API server and no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s.decide import ScanObservation, ScanPlan, decide_scan, policy_of
from facescan_operator.k8s.observe import JobView, PodTrouble
from facescan_operator.k8s.register import RegisterJob
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.settlement import WorkerOutcome
from facescan_operator.sizing import CalibrationTable
from facescan_queue.models import GroupCount, LeaseInfo, QueueStatus

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
NO_MEMORY = "0/2 nodes are available: 2 Insufficient memory."


def spec(**extra: Any) -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "db"},
            "library": {"volume": {"persistentVolumeClaim": {"claimName": "photos"}}},
            "detector": {"image": "ghcr.io/facescan/detector:0.1.0"},
            "cascade": [{"model": "cnn", "scale": 1.0}, {"model": "hog", "scale": 1.0}],
            "parallelism": 2,
            **extra,
        }
    )


def job(name: str, *, trouble: PodTrouble | None = None, images: int = 10) -> JobView:
    return JobView(
        name, 0, 1, "cpu", 2048 * 2**20, WorkerOutcome.RUNNING, "", None, images,
        created_at=NOW - timedelta(minutes=5), pods=1, trouble=trouble,
    )  # fmt: skip


def seen(
    *,
    jobs: list[JobView] | None = None,
    leases: list[LeaseInfo] | None = None,
    groups: list[GroupCount] | None = None,
    counts: QueueStatus | None = None,
    registered: bool = True,
    **extra: Any,
) -> ScanObservation:
    previous = {"registration": {"registeredAt": "2026-12-03T11:00:00Z"}} if registered else {}
    breaker = CircuitBreaker()
    return ScanObservation(
        now=NOW,
        jobs=jobs or [],
        refusals={},
        present=set(),
        leases=leases or [],
        groups=groups or [],
        counts=counts or QueueStatus(images=40, pending=40),
        register_jobs=extra.pop("register_jobs", []),
        breaker=breaker,
        breaker_was=breaker.state,
        previous=extra.pop("previous", previous),
        **extra,
    )


def tick(s: FaceScanSpec, observation: ScanObservation) -> ScanPlan:
    return decide_scan(s, CalibrationTable.default(), observation)


def test_a_new_facescan_writes_its_policy_and_registers_its_files_first() -> None:
    s = spec(library={"volume": {"emptyDir": {}}, "rescanIntervalSeconds": 3600})
    plan = tick(s, seen(counts=QueueStatus(), registered=False))
    assert plan.library == policy_of(s)
    assert plan.registering.create
    assert plan.loop.launches == ()
    assert plan.status["phase"] == "Pending"
    # the next tick: the policy is written, the register Job runs
    running = RegisterJob("scan-register-x", NOW)
    later = tick(
        s,
        seen(counts=QueueStatus(), registered=False, written=policy_of(s), register_jobs=[running]),
    )
    assert later.library is None
    assert not later.registering.create


def test_runnable_images_get_jobs_up_to_parallelism_and_the_status_counts_them() -> None:
    plan = tick(spec(), seen(groups=[GroupCount(0, 1, 40)], written=policy_of(spec())))
    assert len(plan.loop.launches) == 2
    assert plan.status["phase"] == "Running"
    assert plan.status["activeJobs"] == 2
    assert any(line.startswith("launch step 0") for line in plan.lines())


def test_a_batch_no_node_has_memory_for_goes_down_the_cascade_in_the_same_tick() -> None:
    stuck = job("scan-s0c1-aaaaaa", trouble=PodTrouble("Unschedulable", NO_MEMORY))
    plan = tick(spec(), seen(jobs=[stuck]))
    assert [s.job for s, _, _ in plan.stuck] == ["scan-s0c1-aaaaaa"]
    assert plan.loop.releases == ()  # handed back by the stuck rule, not charged
    # its 10 images at the next step, over both Jobs parallelism allows
    assert [(x.batch.step, x.batch.limit) for x in plan.loop.launches] == [(1, 5), (1, 5)]
    assert [e[1] for e in plan.events] == ["BatchTooLargeForNodes"]


def test_a_refused_job_is_handed_back_and_holds_its_pool() -> None:
    refused = job("scan-s0c1-bbbbbb", trouble=PodTrouble("ImagePullBackOff", "no such image"))
    lease = LeaseInfo(refused.name, 0, 1, NOW, NOW + timedelta(minutes=5), 10)
    plan = tick(spec(), seen(jobs=[refused], leases=[lease], groups=[GroupCount(0, 1, 30)]))
    assert [(s.job, leased) for s, _, leased in plan.stuck] == [(refused.name, True)]
    assert plan.loop.launches == ()  # the pool is held
    assert plan.status["phase"] == "Degraded"
    assert plan.status["holds"][0]["reason"] == "ImagePullBackOff"


def test_a_suspended_facescan_settles_but_starts_no_job() -> None:
    s = spec(suspend=True, library={"volume": {"emptyDir": {}}, "rescanIntervalSeconds": 60})
    plan = tick(s, seen(groups=[GroupCount(0, 1, 30)], registered=False))
    assert plan.loop.launches == ()
    assert not plan.registering.create
    assert plan.status["phase"] == "Suspended"


def test_jobs_waiting_for_kueue_are_queued_not_running() -> None:
    s = spec(kueueQueueName="photos")
    waiting = JobView(
        "scan-s0c1-cccccc", 0, 1, "cpu", 2**30, WorkerOutcome.RUNNING, "", None, 10,
        created_at=NOW, suspended=True,
    )  # fmt: skip
    plan = tick(s, seen(jobs=[waiting], groups=[GroupCount(0, 1, 40)], written=policy_of(s)))
    assert len(plan.loop.launches) == 1  # parallelism 2: the suspended Job holds a slot
    assert (plan.status["activeJobs"], plan.status["queuedJobs"]) == (0, 2)
    assert "2 waiting for Kueue" in plan.status["conditions"][1]["message"]


def test_progress_leaves_missing_images_out() -> None:
    counts = QueueStatus(images=10, done=8, dead=0, missing=2)
    plan = tick(spec(), seen(counts=counts, written=policy_of(spec())))
    assert plan.status["progress"] == "8/8"
    assert plan.status["phase"] == "Completed"
    assert plan.status["counts"]["missing"] == 2


def test_a_facescan_with_people_matches_its_new_faces_once_detection_settles() -> None:
    s = spec(people={"enabled": True, "dlib": {"matchDistance": 0.55}})
    first = tick(s, seen(counts=QueueStatus(images=10, done=10, faces=12)))
    assert first.people is not None
    assert first.people.create
    assert first.status["people"]["startedFaces"] == 12
    assert first.distances is not None
    assert first.distances.dlib_match == 0.55  # written with the library's policy
    assert "create a people Job" in first.lines()
    # detection still running, and the library already synced a moment ago: not yet
    busy = seen(
        counts=QueueStatus(images=10, pending=4, done=6, faces=12),
        previous={"people": {"syncedFaces": 8, "syncedAt": "2026-12-03T11:59:00Z"}},
        written=policy_of(s),
    )
    later = tick(s, busy)
    assert later.people is not None
    assert not later.people.create
    assert later.distances is None
