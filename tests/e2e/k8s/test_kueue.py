"""The operator's Jobs admitted by the real Kueue (v0.17.0, built from its Go module and
run beside the control plane by the `kueue` fixture, as `dev-cluster up --kueue` runs it:
its webhooks called by the API server on 127.0.0.1, its ServiceAccount's RBAC): a
ClusterQueue with a `cpu` and a `gpu` ResourceFlavor and less quota than the FaceScan's
parallelism, a LocalQueue in the test's namespace. The Jobs are created suspended; Kueue
admits no more at once than the quota holds, the others wait suspended, leasing nothing;
a Job Kueue keeps waiting past its lease's duration loses and is charged nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from facescan_devcluster.kueue import Kueue, local_queue, queues
from facescan_queue.repository import Queue
from tests.e2e.local.support import HOG_FACES

from .cluster import Kube
from .operator_support import (
    Obj,
    Operator,
    apply,
    attempts,
    created_jobs,
    events,
    facescan,
    finished,
    jobs,
    phase,
    poll,
    register,
)
from .test_operator import assert_everything_found_once, scanned

pytestmark = pytest.mark.slow
ALL = sorted(HOG_FACES)
QUEUE = "facescan"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOADS = "kueue.x-k8s.io/v1beta2/workloads"


def kueue_queues(kube: Kube, cpu: str) -> str:
    """The test's ClusterQueue (``cpu`` CPUs of the cpu flavor, 8 GiB, the GPU node's one
    GPU) for its namespace only, and the LocalQueue ``facescan`` feeding it."""
    name = f"facescan-{kube.namespace}"
    selector = {"matchLabels": {"kubernetes.io/metadata.name": kube.namespace}}
    kube.apply(*queues(name, cpu=cpu, memory="8Gi", selector=selector))
    kube.apply(local_queue(QUEUE, kube.namespace, name))
    return name


def condition(obj: Obj, kind: str) -> Obj | None:
    found = ((obj.get("status") or {}).get("conditions")) or ()
    return next((c for c in found if c["type"] == kind and c["status"] == "True"), None)


def pending_reasons(workloads: list[Obj]) -> set[str]:
    """Why Kueue holds each Workload it has not reserved quota for (its condition's message)."""
    return {
        str(c.get("message"))
        for w in workloads
        for c in (w.get("status") or {}).get("conditions") or ()
        if c["type"] == "QuotaReserved" and c["status"] == "False"
    }


def workloads_of(kube: Kube, job: str) -> list[Obj]:
    """The Workload Kueue made of the Job (none yet, or one)."""
    return [
        w
        for w in kube.objects(WORKLOADS)
        if any(o["name"] == job for o in w["metadata"].get("ownerReferences") or ())
    ]


def admitted(kube: Kube, job: str) -> bool:
    return any(condition(w, "Admitted") for w in workloads_of(kube, job))


async def test_kueue_admits_no_more_jobs_than_its_quota_and_every_image_is_done_once(
    cluster: Kube,
    kueue: Kueue,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
) -> None:
    """Parallelism 4, one image a Job, each asking 1 CPU; the ClusterQueue has 2 CPUs of
    the cpu flavor (the gpu flavor's taint keeps CPU Jobs out): two Jobs at work at most,
    the others suspended until Kueue admits them, each on cpu-node."""
    await register(queue, library, photos, ALL)
    kueue_queues(cluster, cpu="2")
    await operator.start()
    await apply(cluster, facescan("photos", kueueQueueName=QUEUE, parallelism=4, batchSize=1))

    most: dict[str, int] = {"admitted": 0, "running": 0, "pods": 0, "waiting": 0}
    waited: set[str] = set()
    reasons: set[str] = set()
    flavors: set[str] = set()
    nodes: set[str] = set()

    def sample() -> bool:
        found = jobs(cluster, "photos")
        running = [j for j in found if not j["spec"].get("suspend") and not finished(j)]
        waiting = [j["metadata"]["name"] for j in found if j["spec"].get("suspend")]
        workloads = cluster.objects(WORKLOADS)
        admitted = [
            w for w in workloads if condition(w, "Admitted") and not condition(w, "Finished")
        ]
        pods = [
            p
            for p in cluster.objects("v1/pods", labels="facescan.io/scan=photos")
            if p["status"].get("phase") in ("Pending", "Running")
        ]
        counts = {"admitted": len(admitted), "running": len(running), "pods": len(pods)}
        assert max(counts.values()) <= 2, f"more than the quota at work: {counts}"
        for key, value in (counts | {"waiting": len(waiting)}).items():
            most[key] = max(most[key], value)
        if running:
            waited.update(waiting)  # suspended while others ran
        reasons.update(pending_reasons(workloads))
        for workload in admitted:
            for podset in workload["status"]["admission"]["podSetAssignments"]:
                flavors.update(podset["flavors"].values())
        nodes.update(p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName"))
        return phase(cluster, "photos") == "Completed"

    await poll(sample, 240, "the scan to complete", every=0.3)

    made = created_jobs(cluster)
    assert len(made) == 6
    for job in made:  # as the operator asked for them (the audit log): Kueue's to admit
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    assert most["admitted"] == 2, most
    assert waited, "no Job waited suspended while others ran"
    assert any("insufficient unused quota for cpu in flavor cpu" in r for r in reasons), reasons
    assert flavors == {"cpu"}
    assert nodes == {"cpu-node"}
    await assert_everything_found_once(queue, dsn, library)
    done = await attempts(dsn)
    assert [a["outcome"] for a in done] == ["done"] * 6  # each image once, nothing charged
    for path in ALL:
        image = await queue.image(library, path)
        assert (image["state"], image["attempts"]) == ("done", 0)
    assert events(cluster, "LeaseExpired") == []


async def test_a_job_kueue_keeps_waiting_past_its_lease_is_admitted_later_and_charges_nothing(
    cluster: Kube,
    kueue: Kueue,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
) -> None:
    """The ClusterQueue's one CPU is taken by another team's Job: the FaceScan's Job waits
    for Kueue longer than its 30 s lease, leasing nothing; when that Job is deleted, Kueue
    admits the waiting one, which does its batch, nothing expired, nothing charged."""
    await register(queue, library, photos, ALL)
    kueue_queues(cluster, cpu="1")
    await apply(cluster, blocker())
    await poll(lambda: admitted(cluster, "blocker"), 30, "the other Job admitted")
    await operator.start()
    scan = facescan("photos", kueueQueueName=QUEUE, leaseSeconds=30, parallelism=1, batchSize=6)
    await apply(cluster, scan)
    (waiting,) = await poll(lambda: jobs(cluster, "photos"), 30, "the suspended Job")
    name = waiting["metadata"]["name"]
    assert waiting["spec"]["suspend"] is True
    held = await poll(lambda: pending_reasons(workloads_of(cluster, name)), 30, "Kueue to hold it")
    assert any("insufficient unused quota for cpu in flavor cpu" in r for r in held), held
    await asyncio.sleep(35)  # longer than the lease

    job: Any = cluster.get("batch/v1/jobs", name)
    assert job["spec"]["suspend"] is True  # still Kueue's to admit
    assert not admitted(cluster, name)
    assert [j["metadata"]["name"] for j in jobs(cluster, "photos")] == [name]
    assert await queue.leases(library) == []
    assert events(cluster, "LeaseExpired") == []
    assert await attempts(dsn) == []

    cluster.kubectl("delete", "job", "blocker", "--wait=false")  # its quota freed
    await scanned(cluster, timeout=240)
    await assert_everything_found_once(queue, dsn, library)
    done = await attempts(dsn)
    assert [a["outcome"] for a in done] == ["done"] * 6  # each image once, nothing charged
    assert name in {a["worker"] for a in done}  # the Job that waited did its batch
    for path in ALL:
        image = await queue.image(library, path)
        assert (image["state"], image["attempts"]) == ("done", 0)
    assert events(cluster, "LeaseExpired") == []


def blocker() -> Obj:
    """Another Job of the LocalQueue asking the ClusterQueue's one CPU, running until it
    is deleted (as the namespace's `restricted` Pod Security level admits it)."""
    security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "name": "sleep",
        "image": "e2e-blocker",
        "command": ["sleep", "3600"],
        "resources": {"requests": {"cpu": "1", "memory": "64Mi"}},
        "securityContext": security,
    }
    template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "blocker", "labels": {QUEUE_LABEL: QUEUE}},
        "spec": {"backoffLimit": 0, "template": template},
    }
