"""Tests of the e2e harness itself: scripts/dev-cluster starts a real control plane that
kubectl and the API use as a cluster, the CRD meets a real API server, and the node agent
runs pods as a kubelet would (volumes, users, memory limits, failures, evictions)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from facescan_devcluster import build

from .cluster import CRD_FILE, RESTRICTED, ROOT, Kube, alive, rest_path

Obj = dict[str, Any]
FACESCANS = "facescan.io/v1alpha1/facescans"


def job(name: str, code: str, *, memory: str | None = None, **container: Any) -> Obj:
    """A Job whose container runs `python -c code`."""
    resources = {"limits": {"memory": memory}} if memory else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "e2e"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "e2e", "role": "worker"}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {"name": "main", "image": "e2e:latest", "command": ["python", "-c"]}
                        | {"args": [code], "resources": resources}
                        | container
                    ],
                },
            },
        },
    }


def finished(kube: Kube, name: str) -> Obj | None:
    found = kube.get("batch/v1/jobs", name)
    conditions = (found or {}).get("status", {}).get("conditions") or ()
    ended = any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)
    return found if ended else None


def condition(obj: Obj, kind: str) -> Obj:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def pods_of(kube: Kube, job_name: str, phase: str | None = None) -> list[Obj]:
    pods = kube.objects("v1/pods", labels=f"job-name={job_name}")
    return [p for p in pods if phase in (None, p.get("status", {}).get("phase"))]


def pod_of(kube: Kube, job_name: str, phase: str | None = None) -> Obj | None:
    return next(iter(pods_of(kube, job_name, phase)), None)


def container_state(pod: Obj) -> Obj:
    return dict(((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {})


def terminated(pod: Obj) -> Obj:
    return dict(container_state(pod)["terminated"])


def events(kube: Kube, reason: str) -> list[Obj]:
    return [e for e in kube.objects("v1/events") if e.get("reason") == reason]


# --- the control plane ---


@pytest.mark.slow
def test_dev_cluster_up_and_down(tmp_path: Path) -> None:
    """What a person runs: up prints the export line and its figures, the cluster serves
    kubectl with two Ready nodes at one release, down stops every process it started."""
    script = str(ROOT / "scripts" / "dev-cluster")
    where = tmp_path / "cluster"
    up = subprocess.run(
        [script, "up", "--dir", str(where)], capture_output=True, text=True, timeout=180
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout == f"export KUBECONFIG={where.resolve()}/admin.kubeconfig\n"
        assert f"Kubernetes {build.VERSION} ready in" in up.stderr
        kubectl = [str(build.binaries()["kubectl"]), f"--kubeconfig={where}/admin.kubeconfig"]
        version = json.loads(subprocess.check_output([*kubectl, "version", "-o", "json"]))
        assert version["serverVersion"]["gitVersion"] == build.VERSION
        assert version["clientVersion"]["gitVersion"] == build.VERSION
        nodes = json.loads(subprocess.check_output([*kubectl, "get", "nodes", "-o", "json"]))
        assert sorted(n["metadata"]["name"] for n in nodes["items"]) == ["cpu-node", "gpu-node"]
        state = json.loads((where / "cluster.json").read_text())
        pids = state["pids"]
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-scheduler",
            "kube-controller-manager",
            "node-agent",
        }
        # everything listens on 127.0.0.1 only
        listening = {
            (c.laddr.ip, name)
            for name, pid in pids.items()
            for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        assert {name for _, name in listening} >= {"etcd", "kube-apiserver"}
        # no default password: the tokens are this cluster's own, readable by root only
        assert oct((where / "pki" / "tokens.csv").stat().st_mode & 0o777) == "0o600"
    finally:
        down = subprocess.run(
            [script, "down", "--dir", str(where)], capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
    assert "kube-apiserver" in down.stdout
    assert not [name for name, pid in pids.items() if alive(pid)]


def test_two_nodes_a_cpu_node_and_a_gpu_node(cluster: Kube) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.objects("v1/nodes", None)}
    cpu, gpu = nodes["cpu-node"], nodes["gpu-node"]
    assert condition(cpu, "Ready")["status"] == condition(gpu, "Ready")["status"] == "True"
    assert cpu["metadata"]["labels"]["facescan.io/pool"] == "cpu"
    assert gpu["metadata"]["labels"]["facescan.io/pool"] == "gpu"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    taints = gpu["spec"]["taints"]
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints
    # the node agent is a node: the Node authorizer keeps it to its own pods' objects
    node = cluster.cluster.dir / "cpu-node.kubeconfig"
    refused = cluster.kubectl("get", "secrets", "-n", "kube-system", kubeconfig=node, check=False)
    assert refused.returncode == 1
    assert 'User "system:node:cpu-node" cannot list resource "secrets"' in refused.stderr


def test_kubectl_applies_gets_and_deletes_a_job(cluster: Kube) -> None:
    manifest = job("applied", "print(1)")
    manifest["spec"]["suspend"] = True
    cluster.apply(manifest)
    cluster.apply(manifest)  # again: a patch
    listed = json.loads(cluster.kubectl("get", "jobs", "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["applied"]
    assert "applied" in cluster.kubectl("get", "jobs", "-l", "app=e2e").stdout
    assert "applied" not in cluster.kubectl("get", "jobs", "-l", "app=other").stdout
    cluster.kubectl("delete", "job", "applied", "--wait=true")
    assert json.loads(cluster.kubectl("get", "jobs", "-o", "json").stdout)["items"] == []
    assert [j["metadata"]["name"] for j in cluster.created("batch/v1/jobs")] == ["applied"]


# --- the CRD on a real API server ---


def facescan(name: str = "photos", **spec: Any) -> Obj:
    body: Obj = {
        "database": {"secretName": "db"},
        "library": {"volume": {"persistentVolumeClaim": {"claimName": "photos"}}},
        "detector": {"image": "facescan-detector:0.1.0"},
    }
    body.update(spec)
    return {
        "apiVersion": "facescan.io/v1alpha1",
        "kind": "FaceScan",
        "metadata": {"name": name},
        "spec": body,
    }


@pytest.fixture
def crd(cluster: Kube) -> Kube:
    """`kubectl apply -f crds/` and wait until the API serves FaceScans."""
    cluster.kubectl("apply", "-f", str(CRD_FILE.parent))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/facescans.facescan.io", "--timeout=30s"
    )
    return cluster


def test_the_crd_is_accepted_and_fills_in_defaults(crd: Kube) -> None:
    crd.apply(facescan())
    got = crd.get(FACESCANS, "photos")
    assert got is not None
    spec = got["spec"]
    assert spec["retryPolicy"] == {
        "backoffBaseSeconds": 60,
        "backoffMultiplier": 2,
        "backoffCapSeconds": 3600,
        "maxAttempts": 5,
    }
    assert spec["cascade"][0] == {"model": "cnn", "scale": 1.0}
    assert spec["library"]["mountPath"] == "/library"
    table = crd.kubectl("get", "fs").stdout.split()
    assert table[:7] == ["NAME", "PHASE", "DONE", "FACES", "RETRYING", "DEAD", "AGE"]
    assert crd.kubectl("get", "-f", str(CRD_FILE)).returncode == 0


BAD_FACESCANS = {
    "negative batch": (
        {"batchSize": 0},
        "spec.batchSize: Invalid value: 0: spec.batchSize in body should be greater than or "
        "equal to 1",
    ),
    "base above cap": (
        {"retryPolicy": {"backoffBaseSeconds": 7200}},
        "spec.retryPolicy: Invalid value: backoffBaseSeconds must not exceed backoffCapSeconds",
    ),
    "bad cpu": ({"detector": {"image": "x", "cpu": "two"}}, "spec.detector.cpu"),
    "unknown model": (
        {"cascade": [{"model": "yolo"}]},
        'supported values: "hog", "cnn", "insightface"',
    ),
    "no pool serves hog": (
        {
            "cascade": [{"model": "cnn"}, {"model": "hog"}],
            "nodePools": [{"name": "gpu", "models": ["cnn"]}],
        },
        "every cascade step's model needs a node pool that serves it",
    ),
    "two volume sources": (
        {
            "library": {
                "volume": {
                    "persistentVolumeClaim": {"claimName": "photos"},
                    "hostPath": {"path": "/"},
                }
            }
        },
        "spec.library.volume: Too many: 2: must have at most 1 item",
    ),
    "pvc without claim": (
        {"library": {"volume": {"persistentVolumeClaim": {}}}},
        "spec.library.volume.persistentVolumeClaim.claimName: Required value",
    ),
    "name over 63": ("x" * 64, "metadata.name must be no more than 63 characters"),
}


@pytest.mark.parametrize("case", sorted(BAD_FACESCANS))
def test_the_api_server_refuses_a_bad_facescan_with_a_clear_message(crd: Kube, case: str) -> None:
    change, message = BAD_FACESCANS[case]
    bad = facescan(change) if isinstance(change, str) else facescan(**change)
    refused = crd.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode == 1
    assert "is invalid" in refused.stderr
    assert message in refused.stderr
    assert crd.objects(FACESCANS) == []


SMUGGLED = {
    "a toleration": {"nodePools": [{"name": "cpu", "models": ["hog"], "tolerations": [{}]}]},
    "a node selector": {"nodePools": [{"name": "cpu", "models": ["hog"], "nodeSelector": {}}]},
    "a GPU count": {"nodePools": [{"name": "cpu", "models": ["hog"], "gpuCount": 8}]},
    "an emptyDir library": {"library": {"volume": {"emptyDir": {}}}},
    "a host path's unknown field": {
        "library": {"volume": {"hostPath": {"path": "/", "privileged": True}}}
    },
}


@pytest.mark.parametrize("case", sorted(SMUGGLED))
def test_placement_and_volume_fields_the_schema_lacks_are_refused_by_kubectl(
    crd: Kube, case: str
) -> None:
    """Pools' placement is the admin's (the chart's policy.pools); a FaceScan that writes
    it, or a volume source the schema does not know, is refused outright by kubectl's
    strict field validation, not silently pruned."""
    bad = facescan(**SMUGGLED[case])
    refused = crd.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode == 1
    assert "unknown field" in refused.stderr
    assert crd.objects(FACESCANS) == []


# --- pods on the node agent ---


async def test_a_job_runs_as_its_user_with_its_volumes(cluster: Kube, tmp_path: Path) -> None:
    """A PVC's host folder at the container's mountPath (a path the host does not have),
    an emptyDir, the pod's uid and groups; labels and owner as a Job controller sets them."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "in.txt").write_text("photo")
    cluster.claim(shared, "photos", mode="ReadWriteMany")
    code = (
        "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()));"
        "print(open('/data/in.txt').read()); open('/data/out.txt', 'w').write('x');"
        "open('/scratch/s', 'w').write('s'); print(os.getcwd())"
    )
    manifest = job("hello", code, workingDir="/data")
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["securityContext"] = {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10002}
    pod_spec["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "photos"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    pod_spec["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": "/data"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    cluster.create(manifest)
    await cluster.akubectl(
        "wait", "--for=condition=complete", "job/hello", "--timeout=60s", timeout=90
    )
    done = finished(cluster, "hello")
    assert done is not None
    assert done["status"]["succeeded"] == 1
    pod = pod_of(cluster, "hello")
    assert pod is not None
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0
    assert terminated(pod)["reason"] == "Completed"
    labels = pod["metadata"]["labels"]
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "hello"
    assert labels["role"] == "worker"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert cluster.logs(pod["metadata"]["name"]) == "10001 10001 [10001, 10002]\nphoto\n/data\n"
    assert (shared / "out.txt").read_text() == "x"
    assert (shared / "out.txt").stat().st_uid == 10001
    assert not Path("/data").exists()  # seen by the pod only
    assert not Path("/scratch").exists()
    # the kubernetes client's strict models accept the statuses the node agent writes
    from kubernetes import client

    core: Any = client.CoreV1Api(cluster.api_client())  # Any: its models are all Optional
    status = core.read_namespaced_pod(pod["metadata"]["name"], cluster.namespace).status
    assert status.container_statuses[0].state.terminated.exit_code == 0


async def test_a_job_over_its_memory_limit_is_oom_killed(cluster: Kube) -> None:
    cluster.create(job("hog", "b = b'x' * (300 << 20); print(len(b))", memory="100Mi"))
    done = await cluster.wait_for(lambda: finished(cluster, "hog"), 60, "Job hog")
    failed = condition(done, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 1
    pod = pod_of(cluster, "hog")
    assert pod is not None
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["exitCode"] == 137
    assert terminated(pod)["reason"] == "OOMKilled"


async def test_a_job_gets_env_from_a_secret(cluster: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = base64.b64encode(b"postgresql://db").decode()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}}
    cluster.create(secret | {"data": {"dsn": encoded}, "stringData": {"user": "me"}})
    env = [
        {"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}}},
        {"name": "WHO", "valueFrom": {"secretKeyRef": {"name": "db", "key": "user"}}},
        {"name": "PLAIN", "value": "p-$(WHO)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    code = "import os; e = os.environ; print(e['DSN'], e['PLAIN'], 'TEST_ONLY' in e, e['POD'])"
    monkeypatch.setenv("TEST_ONLY", "1")  # the test's environment does not leak into containers
    cluster.create(job("env", code, env=env))
    await cluster.wait_for(lambda: finished(cluster, "env"), 60, "Job env")
    pod = pod_of(cluster, "env", "Succeeded")
    assert pod is not None
    name = pod["metadata"]["name"]
    assert cluster.logs(name) == f"postgresql://db p-me False {name}\n"


async def test_deleting_a_running_job_kills_its_process(cluster: Kube) -> None:
    cluster.create(job("sleeper", "import time; time.sleep(60)", memory="50Mi"))
    pod = await cluster.wait_for(lambda: pod_of(cluster, "sleeper", "Running"), 60, "Running")
    pid = await cluster.wait_for(lambda: cluster.pid(pod["metadata"]["name"]), 10, "a pid")

    await cluster.akubectl("delete", "job", "sleeper", "--cascade=foreground")
    await cluster.wait_for(lambda: not alive(pid), 20, "the process to die")
    await cluster.wait_for(lambda: pod_of(cluster, "sleeper") is None, 30, "no pod")


TERM_AWARE = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    print('SIGTERM', flush=True); time.sleep(1); sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('started', flush=True)\n"
    "time.sleep(60)\n"
)


async def test_an_evicted_pod_gets_sigterm_and_disruption_target(cluster: Kube) -> None:
    """The Eviction API: the API server marks the pod DisruptionTarget, the node agent
    sends SIGTERM within the grace period, reports how it ended, then removes the pod."""
    cluster.create(job("victim", TERM_AWARE))
    pod = await cluster.wait_for(lambda: pod_of(cluster, "victim", "Running"), 60, "Running")
    name = pod["metadata"]["name"]
    await cluster.wait_for(lambda: "started" in cluster.logs(name), 20, "the program to start")
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": cluster.namespace},
    }
    cluster.request("POST", rest_path("v1/pods", cluster.namespace, name) + "/eviction", eviction)
    evicting = cluster.get("v1/pods", name)  # still there: the agent is in its grace period
    assert evicting is not None
    assert evicting["metadata"]["deletionTimestamp"]
    disruption = condition(evicting, "DisruptionTarget")
    assert (disruption["status"], disruption["reason"]) == ("True", "EvictionByEvictionAPI")

    done = await cluster.wait_for(lambda: finished(cluster, "victim"), 60, "Job victim")
    assert condition(done, "Failed")["status"] == "True"
    assert cluster.logs(name) == "started\nSIGTERM\n"
    await cluster.wait_for(lambda: pod_of(cluster, "victim") is None, 30, "the pod to be removed")
    (evicted,) = [
        p
        for p in cluster.created("v1/pods")
        if p["metadata"].get("generateName", "").startswith("victim-")
    ]
    assert evicted  # and the pod's last status, as the Job controller read it:
    assert done["status"]["failed"] == 1


async def test_a_killed_pod_fails_with_137(cluster: Kube) -> None:
    cluster.create(job("crash", "import time; time.sleep(60)"))
    pod = await cluster.wait_for(lambda: pod_of(cluster, "crash", "Running"), 60, "Running")
    pid = await cluster.wait_for(lambda: cluster.pid(pod["metadata"]["name"]), 10, "a pid")
    os.kill(pid, 9)
    done = await cluster.wait_for(lambda: finished(cluster, "crash"), 60, "Job crash")
    assert condition(done, "Failed")["reason"] == "BackoffLimitExceeded"
    ended = pod_of(cluster, "crash")
    assert ended is not None
    assert terminated(ended)["exitCode"] == 137
    assert terminated(ended)["reason"] == "Error"  # not OOMKilled
    assert not [c for c in ended["status"]["conditions"] if c["type"] == "DisruptionTarget"]


async def test_how_pods_fail_to_start(cluster: Kube) -> None:
    late = job("late", "import time; time.sleep(30)")
    late["spec"]["activeDeadlineSeconds"] = 2
    secretless = {"secretKeyRef": {"name": "absent", "key": "dsn"}}
    for manifest in (
        late,
        job("unknown", "", command=["no-such-program"]),
        job("secretless", "print(1)", env=[{"name": "DSN", "valueFrom": secretless}]),
        job("unpulled", "print(1)", image="registry.example/none:1"),
    ):
        cluster.create(manifest)

    done = await cluster.wait_for(lambda: finished(cluster, "late"), 60, "late")
    assert condition(done, "Failed")["reason"] == "DeadlineExceeded"
    await cluster.wait_for(lambda: finished(cluster, "unknown"), 60, "unknown")
    unknown = pod_of(cluster, "unknown")
    assert unknown is not None
    assert terminated(unknown)["reason"] == "StartError"
    assert terminated(unknown)["exitCode"] == 128

    def waiting(job_name: str) -> Obj | None:
        pod = pod_of(cluster, job_name)
        return container_state(pod).get("waiting") if pod else None

    config = await cluster.wait_for(
        lambda: (w := waiting("secretless")) and w["reason"] == "CreateContainerConfigError" and w,
        30,
        "config error",
    )
    assert 'secret "absent" not found' in config["message"]
    pull = await cluster.wait_for(
        lambda: (w := waiting("unpulled")) and w["reason"] == "ImagePullBackOff" and w,
        30,
        "ImagePullBackOff",
    )
    assert "registry.example/none:1" in pull["message"]
    assert finished(cluster, "secretless") is None  # stuck Pending, like a real kubelet
    assert finished(cluster, "unpulled") is None


async def test_a_restricted_namespace_refuses_a_hostpath_pod(cluster: Kube) -> None:
    """Pod Security admission is on: the Job exists, its pod never does (FailedCreate)."""
    cluster.request(
        "PATCH", f"/api/v1/namespaces/{cluster.namespace}", {"metadata": {"labels": RESTRICTED}}
    )
    manifest = job("hostpath", "print(1)")
    manifest["spec"]["template"]["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/tmp"}}]
    cluster.create(manifest)
    refused = await cluster.wait_for(lambda: events(cluster, "FailedCreate"), 30, "FailedCreate")
    assert 'violates PodSecurity "restricted:latest"' in refused[0]["message"]
    assert "restricted volume types" in refused[0]["message"]
    assert cluster.objects("v1/pods") == []
