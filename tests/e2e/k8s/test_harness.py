"""Tests of the e2e harness itself: the emulated API works for kubectl, the kubernetes
client and kopf, and the in-test kubelet runs Jobs for real (OOM kills included)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client

from .cluster import CRD_FILE, Cluster, Kubelet, parse_quantity, selected

NS = "default"


def job(name: str, code: str, *, memory: str | None = None, **container: Any) -> dict[str, Any]:
    """A Job whose container runs `python -c code`."""
    resources = {"limits": {"memory": memory}} if memory else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "e2e"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "e2e", "role": "worker"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "e2e:latest", "command": ["python", "-c"]}
                        | {"args": [code], "resources": resources}
                        | container
                    ],
                },
            },
        },
    }


def finished(cluster: Cluster, name: str) -> dict[str, Any] | None:
    found = cluster.get("batch/v1/jobs", NS, name)
    return found if found and (found.get("status") or {}).get("conditions") else None


def pod_of(cluster: Cluster, job_name: str, phase: str | None = None) -> dict[str, Any] | None:
    pods = cluster.objects("v1/pods", NS, labels=f"job-name={job_name}")
    return next((p for p in pods if phase in (None, p.get("status", {}).get("phase"))), None)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


def test_kubectl_applies_gets_and_deletes_a_job(cluster: Cluster, tmp_path: Path) -> None:
    manifest = job("applied", "print(1)")
    manifest["spec"]["suspend"] = True
    manifest["metadata"]["namespace"] = "scans"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scans"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all([namespace, manifest]))

    cluster.kubectl("apply", "-f", str(path), "--validate=false")
    cluster.kubectl("apply", "-f", str(path), "--validate=false")  # again: a patch
    assert "scans" in cluster.kubectl("get", "namespaces").stdout
    listed = json.loads(cluster.kubectl("get", "jobs", "-n", "scans", "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["applied"]
    meta = listed["items"][0]["metadata"]
    assert meta.keys() >= {"uid", "resourceVersion", "creationTimestamp"}
    assert "applied" in cluster.kubectl("get", "jobs", "-A", "-l", "app=e2e").stdout
    assert "applied" not in cluster.kubectl("get", "jobs", "-A", "-l", "app=other").stdout

    cluster.kubectl("delete", "job", "applied", "-n", "scans")
    assert json.loads(cluster.kubectl("get", "jobs", "-A", "-o", "json").stdout)["items"] == []


def test_kubectl_applies_the_crd_and_a_facescan(cluster: Cluster, tmp_path: Path) -> None:
    if CRD_FILE.exists():
        cluster.kubectl("apply", "-f", str(CRD_FILE), "--validate=false")
    scan = {
        "apiVersion": "facescan.io/v1alpha1",
        "kind": "FaceScan",
        "metadata": {"name": "photos", "namespace": NS},
        "spec": {"library": {"mountPath": "/photos"}},
    }
    (tmp_path / "scan.yaml").write_text(yaml.safe_dump(scan))
    cluster.kubectl("apply", "-f", str(tmp_path / "scan.yaml"), "--validate=false")
    # Names only: the emulator serves no Table, so no additionalPrinterColumns.
    assert "photos" in cluster.kubectl("get", "facescans").stdout
    assert "photos" in cluster.kubectl("get", "fs").stdout
    got = json.loads(cluster.kubectl("get", "fs", "photos", "-o", "json").stdout)
    assert got["spec"] == scan["spec"]


def test_the_python_client_lists_pods_by_label_selector(cluster: Cluster) -> None:
    for name, labels in [("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {})]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
        cluster.create(pod | {"spec": {"containers": [{"name": "c", "image": "i"}]}})
    core: Any = client.CoreV1Api(cluster.api_client())  # Any: its models are all Optional

    def names(selector: str) -> list[str]:
        found = core.list_namespaced_pod(NS, label_selector=selector)
        return sorted(pod.metadata.name for pod in found.items)

    assert names("") == ["a", "b", "c"]
    assert names("app=x") == ["a"]
    assert names("app=x,tier=1") == ["a"]
    assert names("app") == ["a", "b"]
    assert names("!app") == ["c"]
    assert names("app!=x") == ["b", "c"]
    assert names("app in (x, y)") == ["a", "b"]
    assert names("app notin (x)") == ["b", "c"]
    raw = core.list_namespaced_pod(NS, _preload_content=False)
    assert json.loads(raw.data)["kind"] == "PodList"


async def test_kopf_sees_jobs_and_handles_a_facescan(cluster: Cluster, kubelet: Kubelet) -> None:
    registry = kopf.OperatorRegistry()
    # a fresh registry has no login handlers: add kopf's default one (kubeconfig via KUBECONFIG)
    kopf.on.login(registry=registry)(kopf.login_via_client)
    statuses: list[dict[str, Any]] = []
    deleted: list[str] = []

    @kopf.on.event("batch", "v1", "jobs", registry=registry)
    def record(body: kopf.Body, **_: Any) -> None:
        statuses.append(dict(body.get("status") or {}))

    @kopf.on.create("facescan.io", "v1alpha1", "facescans", registry=registry)
    def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        kopf.info(body, reason="Started", message="an Event, with generateName")
        patch.status["phase"] = "Running"

    @kopf.on.delete("facescan.io", "v1alpha1", "facescans", registry=registry)
    def cleanup(name: str, **_: Any) -> None:  # kopf adds a finalizer for this one
        deleted.append(name)

    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry, clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        cluster.create(job("seen", "print('hi')"))
        await cluster.wait_for(lambda: any(s.get("succeeded") == 1 for s in statuses))
        meta = {"name": "photos", "namespace": NS}
        cluster.create({"apiVersion": "facescan.io/v1alpha1", "kind": "FaceScan", "metadata": meta})

        def phase() -> str | None:
            scan = cluster.get("facescan.io/v1alpha1/facescans", NS, "photos") or {}
            return str(scan.get("status", {}).get("phase") or "") or None

        assert await cluster.wait_for(phase, what="the FaceScan's status") == "Running"
        assert [e["reason"] for e in cluster.objects("v1/events", NS)] == ["Started"]
        # kubectl waits for the deletion (a watch), which waits for kopf's finalizer
        await cluster.akubectl("delete", "facescan", "photos", "--timeout=10s")
        assert deleted == ["photos"]
    finally:
        stop.set()
        await asyncio.wait_for(operator, 10)


async def test_a_job_runs_to_completion(cluster: Cluster, kubelet: Kubelet, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    manifest = job("hello", "print('hi'); open('out.txt', 'w').write('x')", workingDir=str(shared))
    manifest["spec"]["template"]["spec"]["volumes"] = [
        {"name": "data", "hostPath": {"path": str(shared)}}
    ]
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": str(shared)}
    ]
    cluster.create(manifest)
    await cluster.akubectl("wait", "--for=condition=complete", "job/hello", "--timeout=15s")
    done = await cluster.wait_for(lambda: finished(cluster, "hello"), what="Job hello")

    assert done["status"]["conditions"][0]["type"] == "Complete"
    assert done["status"]["succeeded"] == 1
    assert done["status"]["completionTime"]
    pod = pod_of(cluster, "hello")
    assert pod is not None
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0
    assert terminated(pod)["reason"] == "Completed"
    labels = pod["metadata"]["labels"]
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "hello"
    assert labels["role"] == "worker"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert (shared / "out.txt").read_text() == "x"
    assert kubelet.logs(NS, pod["metadata"]["name"]) == "hi\n"
    assert cluster.kubectl("logs", pod["metadata"]["name"]).stdout == "hi\n"
    # the kubernetes client's strict models accept the statuses the kubelet writes
    api = cluster.api_client()
    core: Any = client.CoreV1Api(api)  # Any: its models are all Optional
    batch: Any = client.BatchV1Api(api)
    status = core.read_namespaced_pod(pod["metadata"]["name"], NS).status
    assert status.container_statuses[0].state.terminated.exit_code == 0
    assert batch.read_namespaced_job("hello", NS).status.succeeded == 1


async def test_a_job_over_its_memory_limit_is_oom_killed(
    cluster: Cluster, kubelet: Kubelet
) -> None:
    if not kubelet.cgroups:
        pytest.skip("no writable cgroup v1 memory controller here (needs root)")
    cluster.create(job("hog", "b = b'x' * (300 << 20); print(len(b))", memory="100Mi"))
    done = await cluster.wait_for(lambda: finished(cluster, "hog"), what="Job hog")

    assert done["status"]["conditions"][0]["type"] == "Failed"
    assert done["status"]["conditions"][0]["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 1
    pod = pod_of(cluster, "hog")
    assert pod is not None
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["exitCode"] == 137
    assert terminated(pod)["reason"] == "OOMKilled"


async def test_a_job_gets_env_from_a_secret(
    cluster: Cluster, kubelet: Kubelet, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = base64.b64encode(b"postgresql://db").decode()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": NS}}
    cluster.create(secret | {"data": {"dsn": encoded}, "stringData": {"user": "me"}})
    env = [
        {"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}}},
        {"name": "WHO", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}},
        {"name": "PLAIN", "value": "p-$(WHO)"},
    ]
    code = "import os; print(os.environ['DSN'], os.environ['PLAIN'], 'TEST_ONLY' in os.environ)"
    monkeypatch.setenv("TEST_ONLY", "1")  # the test's environment does not leak into containers
    cluster.create(job("env", code, env=env))
    await cluster.wait_for(lambda: finished(cluster, "env"), what="Job env")
    pod = pod_of(cluster, "env", "Succeeded")
    assert pod is not None
    assert kubelet.logs(NS, pod["metadata"]["name"]) == "postgresql://db p-me False\n"


async def test_deleting_a_running_job_kills_its_process(cluster: Cluster, kubelet: Kubelet) -> None:
    cluster.create(job("sleeper", "import time; time.sleep(60)", memory="50Mi"))
    pod = await cluster.wait_for(lambda: pod_of(cluster, "sleeper", "Running"), what="Running")
    pid = kubelet.pid(NS, pod["metadata"]["name"])
    assert pid is not None

    await cluster.akubectl("delete", "job", "sleeper")
    await cluster.wait_for(lambda: not _alive(pid), timeout=5, what="the process to die")
    await cluster.wait_for(lambda: pod_of(cluster, "sleeper") is None, timeout=5, what="no pod")


@pytest.mark.parametrize("how", ["preempt", "kill"])
async def test_a_pod_can_be_preempted_or_killed(
    cluster: Cluster, kubelet: Kubelet, how: str
) -> None:
    cluster.create(job("victim", "import time; time.sleep(60)"))
    pod = await cluster.wait_for(lambda: pod_of(cluster, "victim", "Running"), what="Running")
    getattr(kubelet, how)(NS, pod["metadata"]["name"])
    done = await cluster.wait_for(lambda: finished(cluster, "victim"), what="Job victim")

    assert done["status"]["conditions"][0]["type"] == "Failed"
    ended = pod_of(cluster, "victim")
    assert ended is not None
    assert ended["status"]["phase"] == "Failed"
    assert terminated(ended)["exitCode"] == 137
    assert terminated(ended)["reason"] == "Error"  # not OOMKilled
    disruption = [c for c in ended["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    if how == "preempt":
        assert disruption[0]["status"] == "True"
        assert disruption[0]["reason"] == "PreemptionByScheduler"
    else:
        assert disruption == []


async def test_how_jobs_fail(cluster: Cluster, kubelet: Kubelet) -> None:
    retried = job("retried", "raise SystemExit(3)")
    retried["spec"]["backoffLimit"] = 2
    late = job("late", "import time; time.sleep(30)")
    late["spec"]["activeDeadlineSeconds"] = 1
    secretless = {"secretKeyRef": {"name": "absent", "key": "dsn"}}
    for manifest in (
        retried,
        late,
        job("unknown", "", command=["no-such-program"]),
        job("secretless", "print(1)", env=[{"name": "DSN", "valueFrom": secretless}]),
    ):
        cluster.create(manifest)

    done = await cluster.wait_for(lambda: finished(cluster, "retried"), what="retried")
    assert done["status"]["failed"] == 3  # backoffLimit 2: three pods, no backoff delay
    assert done["status"]["conditions"][0]["reason"] == "BackoffLimitExceeded"
    assert len(cluster.objects("v1/pods", NS, "job-name=retried")) == 3
    done = await cluster.wait_for(lambda: finished(cluster, "late"), what="late")
    assert done["status"]["conditions"][0]["reason"] == "DeadlineExceeded"
    await cluster.wait_for(lambda: finished(cluster, "unknown"), what="unknown")
    unknown = pod_of(cluster, "unknown")
    assert unknown is not None
    assert terminated(unknown)["reason"] == "StartError"
    waiting = await cluster.wait_for(
        lambda: (pod_of(cluster, "secretless") or {}).get("status", {}).get("containerStatuses")
    )
    assert waiting[0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert finished(cluster, "secretless") is None  # stuck Pending, like a real kubelet


def test_quantities_and_selectors() -> None:
    assert parse_quantity("100Mi") == 100 * 2**20
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("2G") == 2 * 10**9
    assert parse_quantity("512Ki") == 512 * 1024
    assert parse_quantity("3K") == parse_quantity("3k") == 3000
    assert parse_quantity("7M") == 7 * 10**6
    assert parse_quantity("1048576") == 2**20
    assert parse_quantity(None) is None
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("lots")
    pod = {"metadata": {"name": "p", "labels": {"a": "b", "c": ""}}, "status": {"phase": "Running"}}
    assert selected(pod, {"labelSelector": "a=b,c", "fieldSelector": "metadata.name=p"})
    assert selected(pod, {"fieldSelector": "status.phase!=Failed"})
    assert not selected(pod, {"labelSelector": "a==x"})
    assert not selected(pod, {"fieldSelector": "metadata.name=q"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # not a zombie
