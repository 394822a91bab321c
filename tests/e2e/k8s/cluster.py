"""End-to-end harness: a real Kubernetes control plane (scripts/dev-cluster's: etcd,
kube-apiserver, kube-scheduler, kube-controller-manager, RBAC and admission on) with the
project's node agent, one per test process, and a fresh namespace per test.

The test talks to it as a cluster admin would: the real kubectl (built at the same
release), the kubernetes client and plain API calls with the admin kubeconfig. What the
API was asked to create is read back from the API server's audit log (Jobs and pods,
deleted or not). A pod's process, pid and log are the node agent's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from facescan_devcluster import build
from facescan_devcluster.controlplane import Cluster

T = TypeVar("T")
Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "facescan.yaml"
CLUSTER_SCOPED = {
    "nodes",
    "namespaces",
    "persistentvolumes",
    "customresourcedefinitions",
    "clusterroles",
    "clusterrolebindings",
    "storageclasses",
    "priorityclasses",
}
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


class ApiError(Exception):
    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(f"HTTP {status}: {payload}")
        self.status = status
        self.payload = payload


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.output}\nstderr: {self.stderr}"


def rest_path(resource: str, namespace: str | None = None, name: str | None = None) -> str:
    """'v1/pods' or 'batch/v1/jobs' (+ namespace, name) -> the API path."""
    parts = resource.split("/")
    group, version, plural = ("", *parts) if len(parts) == 2 else parts
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    scope = f"/namespaces/{namespace}" if namespace and plural not in CLUSTER_SCOPED else ""
    return f"{prefix}{scope}/{plural}" + (f"/{name}" if name else "")


class Kube:
    """The cluster as one test sees it: admin access, and its own namespace."""

    def __init__(self, cluster: Cluster, namespace: str, workdir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.workdir = workdir
        self.kubeconfig = cluster.kubeconfig
        self._ssl = ssl.create_default_context(cafile=str(cluster.ca))
        self._token = cluster.token()

    # --- kubectl ---
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl, as admin (or with ``kubeconfig``), in the test's namespace."""
        argv = [
            str(build.binaries()["kubectl"]),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir}/.kube",
            f"--namespace={self.namespace}",
        ]
        proc = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    async def akubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """kubectl without blocking the caller's event loop (e.g. where kopf runs)."""
        return await asyncio.to_thread(self.kubectl, *args, **kwargs)

    def apply(self, *objects: Obj) -> None:
        """`kubectl apply -f -` of the objects (namespaced ones default to the test's)."""
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": list(objects)}),
        )

    async def aapply(self, *objects: Obj) -> None:
        await asyncio.to_thread(self.apply, *objects)

    # --- the API ---
    def request(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> Any:
        """One API call as admin; PATCH is a merge patch unless ``ctype`` says otherwise."""
        if method == "PATCH" and ctype == "application/json":
            ctype = "application/merge-patch+json"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.cluster.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                payload = json.loads(payload)
            raise ApiError(exc.code, payload) from None

    def create(self, obj: Obj) -> Obj:
        """POST an object (namespaced ones into the test's namespace unless they say)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        resource = f"{api_version}/{self._plural(api_version, kind)}"
        namespace = (obj.get("metadata") or {}).get("namespace") or self.namespace
        return cast(Obj, self.request("POST", rest_path(resource, namespace), obj))

    def _plural(self, api_version: str, kind: str) -> str:
        prefix = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        for item in self.request("GET", prefix)["resources"]:
            if item["kind"] == kind and "/" not in item["name"]:
                return str(item["name"])
        raise LookupError(f"no resource serves {api_version} {kind}")

    def objects(self, resource: str, namespace: str | None = "", labels: str = "") -> list[Obj]:
        """The live objects, e.g. objects('v1/pods', labels='job-name=x'); namespace ''
        is the test's, None all namespaces."""
        ns = self.namespace if namespace == "" else namespace
        query = f"?labelSelector={urllib.parse.quote(labels)}" if labels else ""
        return list(self.request("GET", rest_path(resource, ns) + query)["items"])

    def get(self, resource: str, name: str, namespace: str | None = "") -> Obj | None:
        ns = self.namespace if namespace == "" else namespace
        try:
            return cast(Obj, self.request("GET", rest_path(resource, ns, name)))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def created(self, resource: str, namespace: str | None = "") -> list[Obj]:
        """Every object of ``resource`` ('batch/v1/jobs', 'v1/pods') the API server
        created in the namespace, deleted since or not (its audit log)."""
        ns = self.namespace if namespace == "" else namespace
        plural = resource.rsplit("/", 1)[1]
        found = []
        if not self.cluster.audit_log.exists():
            return found
        for line in self.cluster.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            ok = (event.get("responseStatus") or {}).get("code", 0) < 300
            wanted = ok and event.get("verb") == "create" and ref.get("resource") == plural
            wanted = wanted and not ref.get("subresource") and ns in (None, ref.get("namespace"))
            if wanted and event.get("stage") == "ResponseComplete" and event.get("requestObject"):
                found.append(event["requestObject"])
        return found

    def claim(self, host: Path, name: str, *, mode: str) -> None:
        """A PersistentVolume over a host folder (as a user's NFS or CSI volume is, to
        the node agent) bound to a PersistentVolumeClaim ``name`` in the namespace."""
        volume = f"{self.namespace}-{name}"
        spec = {"accessModes": [mode], "storageClassName": ""}
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": spec
            | {
                "capacity": {"storage": "1Gi"},
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(host), "type": "Directory"},
                "claimRef": {"namespace": self.namespace, "name": name},
            },
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": spec | {"volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
        }
        self.apply(pv, pvc)

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient on this cluster (without touching global config)."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))  # type: ignore[no-untyped-call]

    # --- the node agent's side ---
    def pod_dir(self, pod: str) -> Path | None:
        found = sorted((self.cluster.dir / "pods").glob(f"{self.namespace}_{pod}_*"))
        return found[-1] if found else None

    def pid(self, pod: str) -> int | None:
        """The pid of a pod's running process (None before it starts and after it ends)."""
        where = self.pod_dir(pod)
        with contextlib.suppress(OSError, ValueError):
            return int((where / "pid").read_text()) if where else None
        return None

    def logs(self, pod: str) -> str:
        where = self.pod_dir(pod)
        if where is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(where.glob("*.log")))

    def running_pods(self) -> list[str]:
        """Pods of the namespace whose processes still run on a node."""
        return [
            p.name
            for p in (self.cluster.dir / "pods").glob(f"{self.namespace}_*")
            if (p / "pid").exists()
        ]

    async def wait_for(
        self, check: Callable[[], T | None], timeout: float = 30, what: str = "condition"
    ) -> T:
        """Poll check() until it returns something truthy; async so kopf keeps running."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (result := check()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.1)
        return result


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # not a zombie
