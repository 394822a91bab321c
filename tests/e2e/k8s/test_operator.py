"""The real facescan operator end to end on a real control plane: the CRD applied with
kubectl, the chart rendered by the Helm SDK and applied into a namespace that enforces
the `restricted` Pod Security level, the operator (kopf running
facescan_operator.k8s.handlers in this process) with the chart's ServiceAccount token;
the real Job controller, scheduler and garbage collector; the node agent runs each
detector pod's `facescan-detector run` as uid 10001 under a memory cgroup, the library a
PersistentVolumeClaim, the database URL from a Secret, the queue a real PostgreSQL. What is
checked is the truth in the database and what a user sees: the FaceScan's status, its
Events, its Jobs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from facescan_devcluster.controlplane import free_port
from facescan_operator.k8s import handlers
from facescan_operator.sizing import CalibrationTable
from facescan_queue.repository import Queue
from tests.e2e.local.support import HOG_FACES, SAMPLES, copy_samples

from .cluster import Kube, now
from .dbproxy import DatabaseProxy
from .operator_support import (
    CLAIM,
    FACESCANS,
    INTERVAL_S,
    MOUNT,
    Obj,
    Operator,
    apply,
    attempts,
    created_jobs,
    delete_facescan,
    duplicated_faces,
    events,
    facescan,
    fetch,
    finished,
    install,
    jobs,
    library_claim,
    phase,
    poll,
    register,
    secret,
    status,
    validate_jobs,
    when,
)

ALL = sorted(HOG_FACES)
CGROUPS = Path("/sys/fs/cgroup/memory")


async def scanned(cluster: Kube, name: str = "photos", timeout: float = 150) -> Obj:
    await poll(lambda: phase(cluster, name) == "Completed", timeout, f"{name} to complete")
    return status(cluster, name)


async def assert_everything_found_once(queue: Queue, dsn: str, library: str) -> None:
    """Every image done with HOG's faces, no duplicated face rows, no lease left."""
    assert dict(await queue.faces_per_image(library)) == HOG_FACES
    assert await duplicated_faces(dsn) == []
    assert await queue.leases(library) == []
    counts = await queue.status(library)
    assert (counts.done, counts.pending, counts.leased, counts.dead) == (6, 0, 0, 0)


# --- a) a library scanned to completion ---


@pytest.mark.slow
async def test_a_library_is_scanned_to_completion(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    await register(queue, library, photos, ALL)
    await operator.start()
    ttl = 2
    scan = facescan("photos", parallelism=2, batchSize=2, ttlSecondsAfterFinished=ttl)
    await apply(cluster, scan)

    most = 0

    def sample() -> bool:
        """Never more Jobs' pods at work than parallelism; finished Jobs gone after their TTL."""
        nonlocal most
        moment = when(now())
        found = jobs(cluster, "photos")
        most = max(most, len(found))
        pods = cluster.objects("v1/pods")
        running = {
            p["metadata"]["labels"]["job-name"]
            for p in pods
            if p["status"].get("phase") in ("Pending", "Running")
        }
        assert len(running) <= 2, f"{len(running)} Jobs' pods at work, parallelism 2"
        for job in found:
            if finished(job) and job["status"].get("completionTime"):
                ended = when(job["status"]["completionTime"])
                # deleted once its TTL passed, give or take a tick and the seconds' rounding
                age = (moment - ended).total_seconds()
                assert age <= ttl + INTERVAL_S + 3.5, f"{job['metadata']['name']}: {age} s"
        return phase(cluster, "photos") == "Completed"

    await poll(sample, 150, "the scan to complete", every=0.3)

    got = status(cluster, "photos")
    assert got["progress"] == "6/6"
    assert got["observedGeneration"] == cluster.get(FACESCANS, "photos")["metadata"]["generation"]
    assert got["counts"]["faces"] == sum(HOG_FACES.values()) == 11
    assert got["activeJobs"] == 0
    conditions = {c["type"]: c for c in got["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "AllImagesSettled"
    assert conditions["Degraded"]["status"] == "False"
    await assert_everything_found_once(queue, dsn, library)
    made = created_jobs(cluster)
    assert 3 <= len(made) <= 5  # 6 images in batches of at most 2
    assert all(m["spec"]["backoffLimit"] == 0 for m in made)
    assert 1 <= most <= 2 + len(made)
    created = await poll(
        lambda: len(events(cluster, "JobCreated")) == len(made) and events(cluster, "JobCreated"),
        10,
        "JobCreated events",
    )
    assert {e["type"] for e in created} == {"Normal"}
    assert {e["involvedObject"]["name"] for e in created} == {"photos"}
    assert any("2 images, hog@1" in e["message"] for e in created)
    assert not events(cluster, "BatchOOMKilled")
    await poll(lambda: not jobs(cluster, "photos"), ttl + 10, "finished Jobs deleted after TTL")
    # the real garbage collector removed their pods with them
    await poll(lambda: not cluster.objects("v1/pods"), 30, "the Jobs' pods to be collected")


# --- b) an OOMKilled batch ---


@pytest.mark.slow
async def test_an_oom_killed_batch_recovers_with_only_its_culprit_charged(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    tmp_path: Path,
    dsn: str,
    library: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not (CGROUPS.is_dir() and os.access(CGROUPS, os.W_OK)):
        pytest.skip("no writable cgroup v1 memory controller here (needs root)")
    # dlib's CNN (upsampled once) needs ~4.7 GB for group_t1.jpg at 1280 px and ~0.4 GB
    # for a 160 px photo: a calibration that gives cnn Jobs 704 MiB fits the small ones
    calibration = tmp_path / "calibration.json"
    table = {"models": {"cnn": {"base_mb": 180, "mb_per_megapixel": 300}}}
    calibration.write_text(json.dumps(table))
    monkeypatch.setattr(handlers, "CALIBRATION", CalibrationTable.load(calibration))
    root = tmp_path / "library"
    root.mkdir()
    for name, source in (("a_obama_small.jpg", "obama.jpg"), ("c_biden_small.jpg", "biden.jpg")):
        with Image.open(SAMPLES / source) as image:
            image.thumbnail((160, 160))
            image.save(root / name, quality=92)
    copy_samples(root, ["group_t1.jpg"])
    library_claim(cluster, root)
    # claim order is registration order: the batch starts the small one, then group_t1
    order = ["a_obama_small.jpg", "group_t1.jpg", "c_biden_small.jpg"]
    await register(queue, library, root, order)

    await operator.start()
    cascade = [{"model": "cnn", "scale": 1.0}, {"model": "hog", "scale": 1.0}]
    await apply(cluster, facescan("photos", cascade=cascade, parallelism=1, batchSize=3))
    await scanned(cluster, timeout=240)

    # the pod was OOMKilled by the kernel (the node agent's cgroup), exit 137
    pods = cluster.created("v1/pods")
    assert pods  # the Job controller created them; read how they ended from the API:
    ended = [
        p
        for p in cluster.objects("v1/pods")
        if p["status"]["containerStatuses"][0]["state"].get("terminated", {}).get("reason")
        == "OOMKilled"
    ]
    rows = await attempts(dsn)
    by_path: dict[str, list[Any]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    oom, then = by_path["group_t1.jpg"]
    oom_job = oom["worker"]
    oom_job_body = next(j for j in created_jobs(cluster) if j["metadata"]["name"] == oom_job)
    limits = oom_job_body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "704Mi"
    if ended:  # not yet deleted with its Job (ttlSecondsAfterFinished)
        terminated = ended[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 137

    # only the image in progress was charged: one oom attempt, then done at step 1 (hog)
    assert (oom["step"], oom["model"]) == (0, "cnn")
    assert (oom["outcome"], oom["error_type"]) == ("failed", "oom")
    assert "OOMKilled" in oom["error"]
    assert "704 MiB" in oom["error"]
    assert (then["step"], then["model"], then["outcome"]) == (1, "hog", "done")
    assert then["worker"] != oom_job  # a new Job
    # the image done before the kill stays done; the one not started yet went back
    # uncharged and was done at step 0 by a later Job
    (before,) = by_path["a_obama_small.jpg"]
    assert (before["worker"], before["step"], before["outcome"]) == (oom_job, 0, "done")
    (after,) = by_path["c_biden_small.jpg"]
    assert (after["step"], after["model"], after["outcome"]) == (0, "cnn", "done")
    assert after["worker"] not in (oom_job, then["worker"])
    assert [r["path"] for r in rows if r["outcome"] != "done"] == ["group_t1.jpg"]
    image = await queue.image(library, "group_t1.jpg")
    assert (image["state"], image["step"], image["attempts"], image["degraded"]) == (
        "done",
        1,
        0,  # stepping down is not charged against max attempts
        True,
    )
    assert image["face_count"] == HOG_FACES["group_t1.jpg"]
    assert await fetch(dsn, "SELECT * FROM facescan.failures") == []  # cleared on success
    assert await duplicated_faces(dsn) == []

    # the culprit's new Job was created by the very tick that settled the OOM
    (oom_tick,) = [t for t in operator.ticks if t.oom_killed]
    assert oom_tick.created[0] == then["worker"]
    reasons = [reason for _, reason, _ in oom_tick.events]
    assert reasons.index("BatchOOMKilled") < reasons.index("JobCreated")
    new_job = next(j for j in created_jobs(cluster) if j["metadata"]["name"] == then["worker"])
    assert new_job["metadata"]["labels"]["facescan.io/step"] == "1"
    detected = await fetch(
        dsn,
        "SELECT d.detected_at FROM facescan.detections d JOIN facescan.images i "
        "ON i.id = d.image_id WHERE i.path = 'group_t1.jpg'",
    )
    assert detected[0]["detected_at"] > then["started_at"] >= oom["finished_at"]
    warned = await poll(lambda: events(cluster, "BatchOOMKilled"), 60, "BatchOOMKilled")
    assert len(warned) == 1
    assert warned[0]["type"] == "Warning"
    assert oom_job in warned[0]["message"]
    assert "1 others returned" in warned[0]["message"]


# --- c) a Job deleted mid-scan ---


@pytest.mark.slow
async def test_a_job_deleted_mid_scan_loses_nothing(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
    quick_vanish: timedelta,
) -> None:
    await register(queue, library, photos, ALL)
    await operator.start()
    scan = facescan("photos", parallelism=2, batchSize=3, retryPolicy={"backoffBaseSeconds": 1})
    await apply(cluster, scan)

    async def working() -> tuple[str, set[str]] | None:
        """A running Job with an image in progress (an open attempt), and the images it
        holds, read in one query (it may finish its batch any moment)."""
        running = {j["metadata"]["name"] for j in jobs(cluster, "photos") if not finished(j)}
        rows = await fetch(
            dsn,
            "SELECT a.worker, array_agg(i.path) AS paths FROM facescan.attempts a "
            "JOIN facescan.images i ON i.lease_owner = a.worker "
            "WHERE a.finished_at IS NULL GROUP BY a.worker",
        )
        return next(((r["worker"], set(r["paths"])) for r in rows if r["worker"] in running), None)

    victim, held = await poll(working, 90, "an image in progress")
    await cluster.akubectl("delete", "job", victim, "--wait=false")

    await scanned(cluster)
    await assert_everything_found_once(queue, dsn, library)
    assert victim not in {lease.owner for lease in await queue.leases(library)}
    assert held  # and every one of them is done now (above)
    rows = [r for r in await attempts(dsn) if r["worker"] == victim]
    ended = [r for r in rows if r["outcome"] != "done"]
    # its pod got SIGTERM: the image it was on went back uncharged (deleting a Job is not
    # the image's fault), the ones it had not started went back untouched
    assert len(ended) <= 1, ended
    for row in ended:
        assert (row["outcome"], row["error_type"]) == ("released", None), dict(row)
    assert await fetch(dsn, "SELECT * FROM facescan.failures") == []
    assert [j["metadata"]["name"] for j in created_jobs(cluster)].count(victim) == 1


@pytest.mark.slow
async def test_a_pod_evicted_mid_image_charges_nothing_and_loses_nothing(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
) -> None:
    """The Eviction API (a node drained, a spot node reclaimed): the pod gets
    DisruptionTarget and SIGTERM; its detector hands the lease back uncharged; the Job's
    podFailurePolicy ignores the disruption (no failed Job); every image is detected once
    in the end."""
    await register(queue, library, photos, ALL)
    await operator.start()
    await apply(cluster, facescan("photos", parallelism=1, batchSize=6))

    async def in_progress() -> Obj | None:
        rows = await fetch(dsn, "SELECT worker FROM facescan.attempts WHERE finished_at IS NULL")
        workers = {r["worker"] for r in rows}
        pods = cluster.objects("v1/pods")
        return next(
            (
                p
                for p in pods
                if p["metadata"]["labels"].get("job-name") in workers
                and p["status"].get("phase") == "Running"
            ),
            None,
        )

    pod = await poll(in_progress, 90, "a detector pod with an image in progress")
    victim, job = pod["metadata"]["name"], pod["metadata"]["labels"]["job-name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim}}
    cluster.request(
        "POST", f"/api/v1/namespaces/{cluster.namespace}/pods/{victim}/eviction", eviction
    )

    await scanned(cluster)
    await assert_everything_found_once(queue, dsn, library)
    rows = await attempts(dsn)
    assert {(r["outcome"], r["error_type"]) for r in rows} <= {("done", None), ("released", None)}
    assert [r for r in rows if r["worker"] == job and r["outcome"] == "released"]
    assert await fetch(dsn, "SELECT * FROM facescan.failures") == []
    for path in ALL:
        assert (await queue.image(library, path))["attempts"] == 0
    # the Job did not fail for it (its podFailurePolicy ignores disruptions); the operator,
    # which saw the disruption, deleted it as it ended
    failed = events(cluster, "BackoffLimitExceeded")
    assert [e for e in failed if e["involvedObject"]["name"] == job] == []


# --- d) an operator restart mid-scan ---


@pytest.mark.slow
async def test_an_operator_restart_mid_scan_loses_nothing(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
    quick_vanish: timedelta,
) -> None:
    await register(queue, library, photos, ALL)
    await operator.start()
    await apply(cluster, facescan("photos", parallelism=2, batchSize=2))
    await poll(lambda: created_jobs(cluster), 30, "a first Job")
    await operator.stop()
    before = {j["metadata"]["name"] for j in created_jobs(cluster)}
    ticks = len(operator.ticks)
    left = await unheld(dsn, library, created_jobs(cluster))

    await operator.start()  # a new process: fresh clients, breakers, pools
    got = await scanned(cluster)
    assert got["progress"] == "6/6"
    await assert_everything_found_once(queue, dsn, library)
    # no image ran twice: one attempt each, done
    rows = await attempts(dsn)
    assert sorted(r["path"] for r in rows) == ALL
    assert {r["outcome"] for r in rows} == {"done"}
    assert len(operator.ticks) > ticks
    after = {j["metadata"]["name"] for j in created_jobs(cluster)}
    if left:  # the new operator went on where the old one stopped
        assert before < after
    else:  # the old one had claimed every image before it stopped: its Jobs finished them
        assert before == after
    assert {r["worker"] for r in rows} <= after


async def unheld(dsn: str, library: str, jobs: list[Obj]) -> int:
    """Pending images that none of ``jobs`` holds or will hold, read in one snapshot: a
    Job claims its batch as its pod starts, so one that has not claimed yet (no lease,
    no attempt) will take its batch of what is pending now."""
    (row,) = await fetch(
        dsn,
        "SELECT (SELECT count(*) FROM facescan.images"
        "        WHERE library = $1 AND state = 'pending') AS pending,"
        "  ARRAY(SELECT owner FROM facescan.leases) AS leased,"
        "  ARRAY(SELECT DISTINCT worker FROM facescan.attempts) AS worked",
        library,
    )
    started = {*row["leased"], *row["worked"]}
    waiting = sum(batch_size(j) for j in jobs if j["metadata"]["name"] not in started)
    return max(0, int(row["pending"]) - waiting)


def batch_size(job: Obj) -> int:
    """How many images a Job was sent to claim (its FACESCAN_BATCH_SIZE; 0 for others)."""
    env = job["spec"]["template"]["spec"]["containers"][0].get("env") or ()
    return sum(int(e["value"]) for e in env if e["name"] == "FACESCAN_BATCH_SIZE")


# --- e) deleting the FaceScan ---


@pytest.mark.slow
async def test_deleting_the_facescan_deletes_its_jobs_and_keeps_the_results(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
) -> None:
    await register(queue, library, photos, ALL)
    await operator.start()
    await apply(cluster, facescan("photos", parallelism=1, batchSize=2))

    async def midway() -> bool:
        done = (await queue.status(library)).done
        running = [j for j in jobs(cluster, "photos") if not finished(j)]
        return 1 <= done < 6 and bool(running)

    await poll(midway, 90, "some images done and a Job running")
    await delete_facescan(cluster, "photos")
    made = len(created_jobs(cluster))

    assert cluster.get(FACESCANS, "photos") is None
    await poll(lambda: not jobs(cluster, "photos"), 30, "its Jobs to go")
    await poll(lambda: not cluster.running_pods(), 60, "the detector processes to be killed")
    # results stay; work in flight went back to the queue
    assert await queue.leases(library) == []
    counts = await queue.status(library)
    assert counts.leased == 0
    assert counts.done >= 1
    assert counts.done + counts.pending == 6
    done = dict(await queue.faces_per_image(library))
    assert done == {path: HOG_FACES[path] for path in done}
    assert await duplicated_faces(dsn) == []
    faces = await fetch(dsn, "SELECT count(*) AS n FROM facescan.faces")
    assert faces[0]["n"] == sum(done.values())
    # and nothing is started for it any more
    await asyncio.sleep(2 * INTERVAL_S + 0.5)
    assert len(created_jobs(cluster)) == made
    assert jobs(cluster, "photos") == []


# --- f) the Jobs the operator creates ---


OUTSIDE_POLICY = {
    "a hostPath library": (
        {"library": {"volume": {"hostPath": {"path": "/"}}, "mountPath": MOUNT}},
        "spec.library.volume: hostPath is not an allowed volume source",
    ),
    "an image from elsewhere": (
        {"detector": {"image": "docker.io/someone/miner:latest"}},
        "spec.detector.image: 'docker.io/someone/miner:latest' is not an allowed detector image",
    ),
    "another namespace's library": (
        {
            "library": {
                "name": "kube-system/photos",
                "volume": {"persistentVolumeClaim": {"claimName": CLAIM}},
                "mountPath": MOUNT,
            }
        },
        "spec.library.name: 'kube-system/photos' is outside this FaceScan's namespace",
    ),
    "a pool the admin has not defined": (
        {"nodePools": [{"name": "big-gpu", "models": ["hog"]}]},
        "spec.nodePools: there is no pool 'big-gpu'",
    ),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE_POLICY))
async def test_a_facescan_outside_the_admin_policy_is_invalid_and_gets_no_job(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, library: str, case: str
) -> None:
    """Creating a FaceScan is no way around Pod Security or the admin: what the chart's
    policy does not allow gets phase Invalid (PolicyViolation) and one Warning, no Job."""
    await register(queue, library, photos, ALL)
    await operator.start()
    change, message = OUTSIDE_POLICY[case]
    await apply(cluster, facescan("photos", **change))
    await poll(lambda: phase(cluster, "photos") == "Invalid", 30, "phase Invalid")
    (ready,) = [c for c in status(cluster, "photos")["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "PolicyViolation"
    assert message in ready["message"], ready["message"]
    await asyncio.sleep(2 * INTERVAL_S + 0.5)
    assert created_jobs(cluster) == []
    assert len(events(cluster, "PolicyViolation")) == 1


async def test_every_job_the_operator_creates_is_a_valid_job(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, library: str
) -> None:
    """With everything a spec can ask of a Job: the admin's GPU and CPU pools (node
    selectors, tolerations, a GPU, a memory cap: the chart's policy), a model volume and
    a Kueue queue (Jobs created suspended, and no Kueue here to admit them). The fixture
    also validates every test's Jobs."""
    await register(queue, library, photos, ALL)
    await operator.start()
    pools = [{"name": "gpu", "models": ["cnn", "insightface"]}, {"name": "cpu", "models": ["hog"]}]
    scan = facescan(
        "photos",
        cascade=[{"model": "cnn", "scale": 1.0}, {"model": "hog", "scale": 1.0}],
        nodePools=pools,
        kueueQueueName="facescan",
        detector={
            "image": "facescan-detector:e2e",
            "gpuImage": "facescan-detector:e2e-cuda",
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        },
        parallelism=3,
    )
    await apply(cluster, scan)
    made = await poll(lambda: len(created_jobs(cluster)) >= 2 and created_jobs(cluster), 30, "Jobs")

    assert validate_jobs(made) == len(made)
    for job in made:
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "facescan"
        assert container["image"] == "facescan-detector:e2e-cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"] == {"facescan.io/pool": "gpu"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert {"name": "FACESCAN_MODEL_DIR", "value": "/models"} in container["env"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "FaceScan"
    # the API server accepted them as they are (the audit log holds what was created)
    assert {j["metadata"]["name"] for j in made} <= {
        j["metadata"]["name"] for j in jobs(cluster, "photos")
    }


@pytest.mark.slow
async def test_deleting_the_facescan_after_its_secret_still_deletes_its_jobs(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    library: str,
) -> None:
    """`kubectl delete -f` of a directory may delete the Secret first: the operator can no
    longer reach the database, but the Jobs must go and the FaceScan must not hang."""
    await register(queue, library, photos, ALL)
    await operator.start()
    await apply(cluster, facescan("photos", parallelism=1, batchSize=6))
    await poll(lambda: [j for j in jobs(cluster, "photos") if not finished(j)], 30, "a Job")
    await cluster.akubectl("delete", "secret", "facescan-db")
    await delete_facescan(cluster, "photos")

    assert cluster.get(FACESCANS, "photos") is None
    await poll(lambda: not jobs(cluster, "photos"), 30, "its Jobs to go")
    await poll(lambda: not cluster.running_pods(), 60, "the detector processes to be killed")


# --- g) the chart's Deployment: the operator as a pod ---


@pytest.mark.slow
async def test_the_chart_runs_the_operator_as_a_pod_that_scans_a_library(
    cluster: Kube,
    crds: None,
    db_proxy: DatabaseProxy,
    dsn: str,
    queue: Queue,
    photos: Path,
    library: str,
    tmp_path: Path,
) -> None:
    """As `helm install` does: the whole chart applied into a namespace that enforces
    `restricted`; the Deployment's pod (admitted by Pod Security) runs `facescan operator`
    on a node, with its ServiceAccount's mounted token and the API server's CA (in-cluster
    config); it scans the library with nothing of the test's process in between."""
    await register(queue, library, photos, ALL)
    values = {
        "operator": {"health": {"address": "127.0.0.1", "port": free_port()}},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
    }
    install(cluster, tmp_path, operator_pod=True, **values)
    await apply(cluster, secret(db_proxy.tcp_dsn(dsn)))

    def operator_pod() -> Obj | None:
        pods = cluster.objects("v1/pods", labels="app.kubernetes.io/name=facescan-operator")
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running[0] if running else None

    pod = await poll(operator_pod, 60, "the operator's pod to run")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    await apply(cluster, facescan("photos", parallelism=2, batchSize=3))
    got = await scanned(cluster, timeout=240)
    assert got["progress"] == "6/6"
    await assert_everything_found_once(queue, dsn, library)
    logs = cluster.logs(pod["metadata"]["name"])
    assert "reconcile_scan" in logs, logs[-2000:]
    assert "Forbidden" not in logs, logs[-2000:]  # the chart's RBAC is enough


# --- h) one FaceScan's database out of reach ---


@pytest.mark.slow
async def test_one_facescan_s_database_outage_leaves_the_others_and_the_operator_alone(
    cluster: Kube,
    operator: Operator,
    queue: Queue,
    photos: Path,
    dsn: str,
    library: str,
    db_proxy: DatabaseProxy,
) -> None:
    """A second FaceScan whose database refuses connections: it says so on itself
    (Degraded DatabaseUnavailable, one Warning Event), the first one is scanned to the
    end, and the operator's liveness endpoint answers 200 all along (no restart)."""
    await register(queue, library, photos, ALL)
    both = secret(db_proxy.tcp_dsn(dsn))
    both["stringData"] = {"broken": "postgresql://nobody@127.0.0.1:1/nowhere"}
    await apply(cluster, both)
    operator.health_port = free_port()
    await operator.start()
    broken = facescan("broken", parallelism=1)
    broken["spec"]["database"] = {"secretName": "facescan-db", "key": "broken"}
    await apply(cluster, broken, facescan("photos", parallelism=2, batchSize=3))

    healthy: list[int] = []

    async def live() -> bool:
        url = f"http://127.0.0.1:{operator.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: ASYNC210
            healthy.append(reply.status)
        return phase(cluster, "photos") == "Completed"

    await poll(live, 150, "photos to complete while broken is down", every=1)
    await assert_everything_found_once(queue, dsn, library)
    assert set(healthy) == {200}
    got = status(cluster, "broken")
    (degraded,) = [c for c in got["conditions"] if c["type"] == "Degraded"]
    assert (got["phase"], degraded["status"]) == ("Degraded", "True")
    assert degraded["reason"] == "DatabaseUnavailable"
    warned = [
        e for e in events(cluster, "DatabaseUnavailable") if e["involvedObject"]["name"] == "broken"
    ]
    assert len(warned) == 1  # not one per tick
    assert not [
        e for e in events(cluster, "DatabaseUnavailable") if e["involvedObject"]["name"] == "photos"
    ]


# --- i) a Job that waits to run ---


@pytest.mark.slow
async def test_a_job_suspended_longer_than_its_lease_then_admitted_loses_and_charges_nothing(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    """A Job that waits (here for Kueue's admission) holds no lease: past the lease's
    duration nothing has expired or been charged, and once admitted (the test unsuspends
    it, as Kueue does) its detector claims the batch and every image is done once."""
    await register(queue, library, photos, ALL)
    await operator.start()
    scan = facescan(
        "photos", kueueQueueName="facescan", leaseSeconds=30, parallelism=1, batchSize=6
    )
    await apply(cluster, scan)
    (waiting,) = await poll(lambda: jobs(cluster, "photos"), 30, "the suspended Job")
    assert waiting["spec"]["suspend"] is True
    assert await queue.leases(library) == []
    await asyncio.sleep(35)  # longer than the lease

    assert await queue.leases(library) == []
    assert events(cluster, "LeaseExpired") == []
    assert [j["metadata"]["name"] for j in jobs(cluster, "photos")] == [
        waiting["metadata"]["name"]
    ]  # its batch is spoken for: no second Job
    assert await attempts(dsn) == []
    name = waiting["metadata"]["name"]

    async def admit() -> None:
        """Kueue's part: admit each Job the operator creates (the first one now, any
        later one, for images of another size class, at once)."""
        while True:
            for job in jobs(cluster, "photos"):
                if job["spec"].get("suspend"):
                    patch = '{"spec":{"suspend":false}}'
                    cluster.kubectl(
                        "patch", "job", job["metadata"]["name"], "--type=merge", "-p", patch
                    )
            await asyncio.sleep(0.5)

    admitting = asyncio.create_task(admit())
    try:
        await scanned(cluster, timeout=240)
    finally:
        admitting.cancel()
    await assert_everything_found_once(queue, dsn, library)
    done = await attempts(dsn)
    assert [a["outcome"] for a in done] == ["done"] * 6  # each image once, nothing charged
    assert name in {a["worker"] for a in done}  # the Job that waited did its batch
    assert events(cluster, "LeaseExpired") == []


# --- j) a FaceScan finds its own files ---


@pytest.mark.slow
async def test_applying_a_facescan_alone_scans_its_library_and_rescans_new_files(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    """Nothing registered beforehand: the operator's register Job (detector image, the
    library read-only) registers the files, the detectors find their faces; a photo added
    later is registered by the next rescan and detected too."""
    await operator.start()
    scan = facescan("photos", parallelism=2, batchSize=3)
    scan["spec"]["library"]["rescanIntervalSeconds"] = 8
    await apply(cluster, scan)

    got = await scanned(cluster, timeout=240)
    assert got["progress"] == "6/6"
    await assert_everything_found_once(queue, dsn, library)
    registered = events(cluster, "LibraryRegistered")
    assert registered
    assert got["registration"]["registeredAt"] is not None
    register_jobs = [
        j
        for j in created_jobs(cluster)
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "register"
    ]
    assert register_jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "register",
        MOUNT,
    ]

    shutil.copyfile(SAMPLES / "obama.jpg", photos / "new_obama.jpg")
    await poll(
        lambda: (
            phase(cluster, "photos") == "Completed"
            and status(cluster, "photos").get("progress") == "7/7"
        ),
        120,
        "the new photo registered and detected",
    )
    assert dict(await queue.faces_per_image(library))["new_obama.jpg"] == 1
    assert await duplicated_faces(dsn) == []
