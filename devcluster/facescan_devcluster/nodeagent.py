"""The node agent: the kubelet of a dev cluster's Nodes, without a container runtime.

Started by controlplane.up() as ``python -m facescan_devcluster agent --dir DIR``. For
each Node (a CPU node and a GPU node: labels, taint and ``nvidia.com/gpu`` capacity as a
GPU node pool has them) it registers the Node with its own credentials (Node authorizer
and NodeRestriction apply), renews its Lease, and watches the pods the real scheduler
binds to it. Each pod's first container runs as a local process (pod.py): env from
values, Secrets, ConfigMaps and fields; volumes (PVCs resolved to their PV's host path,
emptyDir, hostPath, ConfigMap and Secret) bound at their mountPaths in a private mount
namespace; the container's uid and groups; a memory cgroup of its limit. Its status is
reported through the API as a kubelet does: Pending (ContainerCreating,
CreateContainerConfigError, ErrImagePull/ImagePullBackOff for an image this node does not
have), Running, then terminated with the exit code, ``OOMKilled`` when the kernel killed it
in its cgroup. A pod being deleted (an eviction through the Eviction API, a preemption, a
Job deleted) gets SIGTERM, SIGKILL after its grace period, its final status, and is then
removed from the API, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
import json
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from facescan_devcluster.controlplane import Cluster
from facescan_devcluster.pod import PodRunner

log = logging.getLogger("facescan_devcluster.nodeagent")
Obj = dict[str, Any]
LEASE_SECONDS = 40
RENEW_S = 10.0
STATUS_S = 60.0


@dataclass(frozen=True)
class NodeShape:
    """What one Node is: labels, taints, capacity."""

    name: str
    labels: dict[str, str]
    taints: list[Obj]
    capacity: dict[str, str]


def node_shapes(names: tuple[str, ...]) -> list[NodeShape]:
    """The CPU node and the GPU node (one fake GPU: the pool's label, taint, resource)."""
    cpu, gpu = names
    base = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return [
        NodeShape(cpu, {"facescan.io/pool": "cpu"}, [], base),
        NodeShape(
            gpu,
            {"facescan.io/pool": "gpu", "nvidia.com/gpu.present": "true"},
            [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            base | {"nvidia.com/gpu": "1"},
        ),
    ]


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Api:
    """Calls to the API server as one Node (its own token)."""

    server: str
    token: str
    ssl: ssl.SSLContext
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": ctype}
        async with self.session.request(
            method, self.server + path, json=body, headers=headers, ssl=self.ssl
        ) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ApiError(resp.status, payload)
            return payload

    async def patch_status(self, path: str, status: Obj) -> None:
        """A strategic merge patch of an object's status (conditions merge by type)."""
        try:
            await self.call(
                "PATCH", path, {"status": status}, "application/strategic-merge-patch+json"
            )
        except ApiError as exc:
            if exc.status != 404:  # gone meanwhile: fine, as for a real kubelet
                raise

    async def watch(self, path: str, params: str, on_event: Any) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch ends."""
        while True:
            listed = await self.call("GET", f"{path}?{params}")
            for item in listed.get("items") or ():
                await on_event("ADDED", item)
            version = listed["metadata"]["resourceVersion"]
            url = f"{self.server}{path}?{params}&watch=1&allowWatchBookmarks=true"
            url += f"&resourceVersion={version}&timeoutSeconds=300"
            headers = {"Authorization": f"Bearer {self.token}"}
            try:
                async with self.session.get(
                    url, headers=headers, ssl=self.ssl, timeout=aiohttp.ClientTimeout(None)
                ) as resp:
                    if resp.status >= 400:
                        raise ApiError(resp.status, await resp.text())
                    async for line in resp.content:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # e.g. 410 Gone: relist
                        if event["type"] != "BOOKMARK":
                            await on_event(event["type"], event["object"])
            except (aiohttp.ClientError, ApiError) as exc:
                log.info("watch %s ended (%s): relisting", path, exc)
                await asyncio.sleep(0.5)


@dataclass
class Node:
    shape: NodeShape
    api: Api
    cluster: Cluster
    images: tuple[str, ...]
    pods: dict[str, PodRunner] = field(default_factory=dict)  # by pod uid

    async def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.shape.name,
                "labels": self.shape.labels
                | {
                    "kubernetes.io/hostname": self.shape.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"taints": self.shape.taints} if self.shape.taints else {},
        }
        with contextlib.suppress(ApiError):  # 409: registered by an earlier agent
            await self.api.call("POST", "/api/v1/nodes", body)
        await self.report_status()

    async def report_status(self) -> None:
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "facescan node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        pressure = [
            {
                "type": kind,
                "status": "False",
                "reason": f"KubeletHas{reason}",
                "message": f"node agent has {reason.lower()}",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for kind, reason in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        status = {
            "capacity": self.shape.capacity,
            "allocatable": self.shape.capacity,
            "conditions": [*pressure, ready],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.shape.name},
            ],
            "nodeInfo": {
                "machineID": "facescan-dev-cluster",
                "systemUUID": self.shape.name,
                "bootID": str(self.cluster.api_port),
                "kernelVersion": os.uname().release,
                "osImage": "facescan node agent (local processes)",
                "containerRuntimeVersion": "facescan-node-agent://0.1.0",
                "kubeletVersion": self.cluster.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        await self.api.patch_status(f"/api/v1/nodes/{self.shape.name}/status", status)
        log.info("node %s: registered, Ready", self.shape.name)

    async def heartbeat(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.shape.name}"
        since_status = 0.0
        while True:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.shape.name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": self.shape.name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": _now(micro=True),
                },
            }
            try:
                try:
                    await self.api.call("PATCH", path, lease, "application/merge-patch+json")
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    collection = path.rsplit("/", 1)[0]
                    await self.api.call("POST", collection, lease)
                since_status += RENEW_S
                if since_status >= STATUS_S:
                    since_status = 0
                    await self.report_status()
            except (ApiError, aiohttp.ClientError) as exc:
                log.warning("%s: heartbeat failed: %s", self.shape.name, exc)
            await asyncio.sleep(RENEW_S)

    async def watch_pods(self) -> None:
        selector = quote(f"spec.nodeName={self.shape.name}")
        await self.api.watch("/api/v1/pods", f"fieldSelector={selector}", self.on_pod)

    async def on_pod(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        runner = self.pods.get(uid)
        if kind == "DELETED":  # kept until now: a late event must not start it again
            if runner is not None:
                self.pods.pop(uid).removed()
            return
        if runner is None:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):  # ended before this agent started
                if meta.get("deletionTimestamp"):  # a kubelet's last word on it
                    body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
                    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                    with contextlib.suppress(ApiError):
                        await self.api.call("DELETE", path, body)
                return
            image = pod["spec"]["containers"][0].get("image", "")
            have = any(fnmatch.fnmatch(image, pattern) for pattern in self.images)
            runner = PodRunner(pod, self.api, self.cluster, have_image=have)
            self.pods[uid] = runner
            runner.start()
            if phase == "Running":  # it ran under an agent that is gone: not any more
                runner.lost()
        runner.update(pod)

    async def stop(self) -> None:
        await asyncio.gather(*(runner.kill() for runner in list(self.pods.values())))


def _now(micro: bool = False) -> str:
    stamp = datetime.datetime.now(datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


async def run(directory: Path) -> None:
    cluster = Cluster.load(directory)
    context = cluster.ssl_context()
    images = tuple(cluster.images)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as session:
        nodes = [
            Node(
                shape,
                Api(cluster.server, cluster.token(f"system:node:{shape.name}"), context, session),
                cluster,
                images,
            )
            for shape in node_shapes(cluster.nodes)
        ]
        for node in nodes:
            await node.register()
        tasks = [asyncio.create_task(c) for n in nodes for c in (n.heartbeat(), n.watch_pods())]
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.stop() for node in nodes))
        waiter.cancel()
        for error in failed:
            if error is not None:
                raise error


def main(directory: Path) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    asyncio.run(run(directory))
