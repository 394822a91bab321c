"""One reconcile tick over Jobs whose pods cannot start, on the real queue in PostgreSQL.

The API server is an in-memory stand-in that answers with the manifests a real one
returns (Jobs as built, pods with the scheduler's and kubelet's status, the Job
controller's FailedCreate Events); the database is real (tests/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from facescan_operator.breaker import CircuitBreaker
from facescan_operator.k8s.jobs import ScanRef
from facescan_operator.k8s.reconcile import KubeApi, Outcome, changed, reconcile
from facescan_operator.k8s.spec import FaceScanSpec
from facescan_operator.sizing import CalibrationTable
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SCAN = ScanRef("photos-ns", "scan", "uid-1")
HOSTPATH = (
    'Error creating: pods "{job}-x" is forbidden: violates PodSecurity "restricted:latest": '
    'restricted volume types (volume "library" uses restricted volume type "hostPath")'
)
NO_MEMORY = (
    "0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint "
    "{nvidia.com/gpu: present}. preemption: 0/2 nodes are available: 1 No preemption victims "
    "found for incoming pod, 1 Preemption is not helpful for scheduling."
)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster(KubeApi):
    """Jobs, pods and Events as the API server lists them."""

    def __init__(self) -> None:
        self.now = T0
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    async def list_jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [p for name, p in self.pods.items() if name in self.jobs]

    async def create_job(self, namespace: str, body: dict[str, Any]) -> None:
        body["metadata"]["creationTimestamp"] = stamp(self.now)
        self.jobs[body["metadata"]["name"]] = body

    async def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.jobs.pop(name, None)

    async def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in field_selector.split(","))
        return [
            e
            for e in self.events
            if all(e["involvedObject"][k.split(".")[1]] == v for k, v in wanted.items())
        ]

    def refuse(self, job: str) -> None:
        """The Job controller cannot create the Job's pod."""
        self.events.append(
            {
                "type": "Warning",
                "reason": "FailedCreate",
                "message": HOSTPATH.format(job=job),
                "involvedObject": {"kind": "Job", "name": job},
                "lastTimestamp": stamp(self.now),
            }
        )

    def pod(self, job: str, **status: Any) -> None:
        self.pods[job] = {
            "metadata": {"labels": {"batch.kubernetes.io/job-name": job}},
            "status": status,
        }


def spec() -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "db"},
            # registration is register.py's (test_register.py); the images are registered
            "library": {"name": "photos", "volume": {"emptyDir": {}}, "rescanIntervalSeconds": 0},
            "detector": {"image": "d"},
            "batchSize": 10,
            "parallelism": 2,
        }
    )


class Ticks:
    def __init__(self, queue: Queue, cluster: Cluster) -> None:
        self.queue, self.cluster = queue, cluster
        self.breaker = CircuitBreaker()
        self.status: dict[str, Any] = {}
        self.written: dict[str, Any] = {}

    async def at(self, seconds: float) -> Outcome:
        self.cluster.now = T0 + timedelta(seconds=seconds)
        outcome = await reconcile(
            SCAN,
            spec(),
            self.queue,
            self.cluster,
            self.breaker,
            self.status,
            calibration=CalibrationTable.default(),
            now=self.cluster.now,
        )
        self.written = changed(self.status, outcome.status)
        self.status = {**self.status, **self.written}
        return outcome

    def degraded(self) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == "Degraded")


def reasons(outcome: Outcome) -> list[str]:
    return [reason for _, reason, _ in outcome.events]


@pytest.fixture
async def ticks(queue: Queue) -> Ticks:
    images = [NewImage(f"img/{i:03d}.jpg", 1000, 1000, 1000 + i) for i in range(20)]
    await queue.ensure_library("photos")
    assert await queue.register("photos", images) == 20
    return Ticks(queue, Cluster())


async def images(dsn: str) -> list[tuple[str, int, int, str | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT state::text, step, attempts, error_type::text FROM facescan.images"
        )
    finally:
        await conn.close()
    return sorted((r[0], r[1], r[2], r[3]) for r in rows)


async def test_refused_pods_are_reported_once_handed_back_uncharged_and_held(
    ticks: Ticks, dsn: str
) -> None:
    cluster = ticks.cluster
    first = await ticks.at(0)
    assert len(first.created) == 2
    for name in list(cluster.jobs):
        cluster.refuse(name)

    refused = await ticks.at(10)
    assert reasons(refused) == ["PodsCannotStart", "PodsCannotStart"]
    assert refused.created == []
    assert cluster.jobs == {}
    assert ticks.degraded()["status"] == "True"
    assert ticks.degraded()["reason"] == "FailedCreate"
    assert 'violates PodSecurity "restricted:latest"' in ticks.degraded()["message"]
    assert ticks.status["phase"] == "Degraded"
    assert await images(dsn) == [("pending", 0, 0, None)] * 20  # nothing charged
    assert await ticks.queue.leases("photos") == []

    quiet = await ticks.at(20)
    assert (quiet.events, quiet.created, ticks.written) == ([], [], {})

    probe = await ticks.at(75)  # past the retry time: one Job tries again
    assert len(probe.created) == 1
    (name, _) = probe.created[0]
    started = T0 + timedelta(seconds=80)
    running = {"startedAt": stamp(started)}
    cluster.pod(name, phase="Running", containerStatuses=[{"state": {"running": running}}])

    recovered = await ticks.at(85)
    assert reasons(recovered) == ["PodsStartAgain", "JobCreated"]
    assert ticks.degraded()["status"] == "False"
    assert ticks.status["phase"] == "Running"
    assert ticks.status["holds"] == []


async def test_a_batch_no_node_has_memory_for_moves_to_the_next_step_in_the_same_tick(
    ticks: Ticks, dsn: str
) -> None:
    cluster = ticks.cluster
    await ticks.at(0)
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": NO_MEMORY,
    }
    for name in list(cluster.jobs):
        cluster.pod(name, phase="Pending", conditions=[unschedulable])

    waiting = await ticks.at(30)  # a scale-up may still come
    assert waiting.events == []
    assert len(cluster.jobs) == 2

    moved = await ticks.at(61)
    assert reasons(moved)[:2] == ["BatchTooLargeForNodes", "BatchTooLargeForNodes"]
    # no attempt charged; pending at step 1 for the new Jobs, whose detectors claim them
    assert await images(dsn) == [("pending", 1, 0, "oom")] * 20
    assert {job["metadata"]["labels"]["facescan.io/step"] for job in cluster.jobs.values()} == {"1"}
    assert (ticks.degraded()["status"], ticks.degraded()["reason"]) == ("True", "Unschedulable")
    assert ticks.status["phase"] == "Running"


async def test_a_job_waiting_to_run_holds_no_lease_and_gets_no_twin(ticks: Ticks, dsn: str) -> None:
    """A Job waiting for Kueue, a node or an image pull leases nothing: waiting longer than
    the lease charges nothing and expires nothing, and its batch is spoken for (no second
    Job for the same images). Its detector claims the batch when it starts."""
    first = await ticks.at(0)
    assert len(first.created) == 2  # 20 images, batches of 10, parallelism 2
    assert await ticks.queue.leases("photos") == []
    assert await images(dsn) == [("pending", 0, 0, None)] * 20

    late = await ticks.at(400)  # longer than the 300 s lease
    assert (late.created, reasons(late)) == ([], [])
    assert await images(dsn) == [("pending", 0, 0, None)] * 20

    job = ticks.cluster.jobs[first.created[0][0]]
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    claimed = await ticks.queue.claim(
        env["FACESCAN_LIBRARY"],
        env["FACESCAN_LEASE_OWNER"],
        step=int(env["FACESCAN_STEP"]),
        size_class=int(env["FACESCAN_SIZE_CLASS"]),
        limit=int(env["FACESCAN_BATCH_SIZE"]),
        lease_seconds=300,
    )
    assert len(claimed) == 10  # what the pod's detector does when it starts
    started = await ticks.at(401)
    assert (started.created, reasons(started)) == ([], [])
    assert [lease.owner for lease in await ticks.queue.leases("photos")] == [
        job["metadata"]["name"]
    ]
