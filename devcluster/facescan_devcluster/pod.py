"""One pod on a node of the node agent: its first container run as a local process, its
status reported through the API as a kubelet reports it.

Created by nodeagent.Node for each pod bound to its node. Resolves the container's
environment and volumes (volumes.py), starts ``podexec`` in a private mount namespace
under a memory cgroup of the container's limit, and follows the pod: Pending
(ContainerCreating, CreateContainerConfigError, ErrImagePull/ImagePullBackOff), Running,
terminated with the exit code (``OOMKilled`` and 137 when the kernel killed it in its
cgroup); restarts per restartPolicy with the kubelet's back-off; on deletion SIGTERM,
SIGKILL after the grace period, the final status, then the pod's removal from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes.utils import quantity

from facescan_devcluster.volumes import ConfigError, Resolver

if TYPE_CHECKING:
    from facescan_devcluster.controlplane import Cluster
    from facescan_devcluster.nodeagent import Api

log = logging.getLogger("facescan_devcluster.pod")
Obj = dict[str, Any]
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
RETRY_S = 2.0
_ENVIRONMENT = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix)}
_ENVIRONMENT.add(Path(__file__).resolve().parents[2])
IMAGE_PATHS = sorted(
    str(p) for p in _ENVIRONMENT if not any(p != q and p.is_relative_to(q) for q in _ENVIRONMENT)
)
"""What a container sees of the host however private its folders are: the project's
Python environment and its sources (an editable install): its "image"."""
BACKOFF_S, BACKOFF_CAP_S = 10.0, 300.0  # the kubelet's crash-loop back-off


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def memory_bytes(text: str | None) -> int | None:
    """A memory limit in bytes as the kubelet reads it (the Kubernetes client's parser)."""
    return None if text is None else int(quantity.parse_quantity(str(text)))


def _condition(kind: str, status: bool) -> Obj:
    return {"type": kind, "status": "True" if status else "False", "lastTransitionTime": now()}


class PodRunner:
    def __init__(self, pod: Obj, api: Api, cluster: Cluster, *, have_image: bool) -> None:
        self.pod = pod
        self.api = api
        self.cluster = cluster
        self.have_image = have_image
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.container: Obj = pod["spec"]["containers"][0]
        self.dir = cluster.dir / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.log_path = self.dir / f"{self.container['name']}.log"
        self.deleting = asyncio.Event()
        self.gone = False  # the pod object no longer exists
        self.done = False
        self.was_lost = False
        self.proc: asyncio.subprocess.Process | None = None
        self.cgroup: Path | None = None
        self.restarts = 0
        self.started_at = now()
        self._task: asyncio.Task[None] | None = None
        self._finalizing: asyncio.Task[None] | None = None

    @property
    def status_path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status"

    # --- events from the node's watch ---
    def start(self) -> None:
        async def main() -> None:
            try:
                await self._main()
            except Exception:
                log.exception("pod %s/%s", self.ns, self.name)
            finally:
                self.done = True
                await self._cleanup()
                if self.deleting.is_set() and not self.gone:
                    await self._finalize()

        self._task = asyncio.create_task(main())

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.deleting.is_set():
            self.deleting.set()
            if self.done and not self.gone:
                self._finalizing = asyncio.create_task(self._finalize())

    def removed(self) -> None:
        """The pod object is gone (deleted at once): stop its processes, report nothing."""
        self.gone = True
        self.deleting.set()
        self._kill_all()

    def lost(self) -> None:
        self.was_lost = True

    async def kill(self) -> None:
        """The agent stops: kill the process and clean up (no status: the node goes)."""
        self.gone = True
        self._kill_all()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the pod's life ---
    async def _main(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.was_lost:
            terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown"}
            terminated["message"] = "The container could not be located when the pod was terminated"
            await self._report("Failed", {"terminated": terminated})
            return
        await self._report("Pending", {"waiting": {"reason": "ContainerCreating"}})
        if not self.have_image:
            await self._no_image()
            return
        launch = await self._prepare()
        if launch is None:
            return
        while True:
            code, reason, message = await self._run_once(launch)
            policy = self.pod["spec"].get("restartPolicy", "Always")
            again = policy == "Always" or (policy == "OnFailure" and code != 0)
            phase = "Succeeded" if code == 0 else "Failed"
            ended: Obj = {"exitCode": code, "reason": reason, "finishedAt": now()}
            ended["startedAt"] = launch["startedAt"]
            if message:
                ended["message"] = message
            if not again or self.deleting.is_set():
                await self._report(phase if not again else "Failed", {"terminated": ended})
                return
            delay = min(BACKOFF_S * 2**self.restarts, BACKOFF_CAP_S)
            self.restarts += 1
            waiting = {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s"}
            await self._report("Running", {"waiting": waiting}, last={"terminated": ended})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deleting.wait(), delay)
                return

    async def _no_image(self) -> None:
        image = self.container.get("image", "")
        message = (
            f'failed to pull image "{image}": not found (this node runs only images '
            f"matching {', '.join(self.cluster.images)}, from the project's environment)"
        )
        await self._report("Pending", {"waiting": {"reason": "ErrImagePull", "message": message}})
        await self._wait_or_deleted(RETRY_S)
        back_off = f'Back-off pulling image "{image}"'
        while not self.deleting.is_set():
            waiting = {"reason": "ImagePullBackOff", "message": back_off}
            await self._report("Pending", {"waiting": waiting})
            await self._wait_or_deleted(BACKOFF_S)

    async def _prepare(self) -> Obj | None:
        """The process's spec, once its env and volumes resolve (retried until then)."""
        resolver = Resolver(self.api, self.pod, self.dir / "volumes", self.cluster.api_port)
        while True:
            try:
                return await resolver.launch_spec(self.container)
            except ConfigError as exc:
                waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                await self._report("Pending", {"waiting": waiting})
                if await self._wait_or_deleted(RETRY_S):
                    return None

    async def _run_once(self, launch: Obj) -> tuple[int, str, str]:
        """Run the container once; (exit code, reason, message)."""
        limit = memory_bytes(
            ((self.container.get("resources") or {}).get("limits") or {}).get("memory")
        )
        self.cgroup = self._make_cgroup(limit)
        error_file = self.dir / "start-error"
        error_file.unlink(missing_ok=True)
        spec = dict(launch, cgroupProcs=str(self.cgroup / "cgroup.procs") if self.cgroup else None)
        spec["errorFile"] = str(error_file)
        if os.geteuid() == 0:
            spec["root"] = str(self.dir / "root")
            spec["image"] = IMAGE_PATHS
            argv = ["unshare", "--mount", "--propagation", "private"]
        else:
            spec["root"] = None
            argv = []
        spec_file = self.dir / "exec.json"
        spec_file.write_text(json.dumps(spec))
        argv += [sys.executable, "-m", "facescan_devcluster.podexec", str(spec_file)]
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        (self.dir / "pid").write_text(str(self.proc.pid))
        launch["startedAt"] = started = now()
        await self._report("Running", {"running": {"startedAt": started}}, ready=True)
        waiting = asyncio.create_task(self.proc.wait())
        deleted = asyncio.create_task(self.deleting.wait())
        await asyncio.wait([waiting, deleted], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            await self._terminate(waiting)
        deleted.cancel()
        rc = await waiting
        (self.dir / "pid").unlink(missing_ok=True)
        code = 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, like a runtime
        start_error = error_file.read_text().strip() if error_file.exists() else ""
        if code == 128 and start_error:
            return 128, "StartError", start_error
        if self._oom_kills():
            return 137, "OOMKilled", self._fallback_message()
        self._remove_cgroup()
        if code == 0:
            return 0, "Completed", ""
        return code, "Error", self._fallback_message()

    def _fallback_message(self) -> str:
        """A failed container's terminated.message under terminationMessagePolicy
        FallbackToLogsOnError, as a kubelet makes it: its log's last 80 lines, at most
        2048 bytes (the termination-message file is not read: no container writes one)."""
        if self.container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - 2048))
                data = log_file.read()
        except OSError:
            return ""
        return b"\n".join(data.splitlines()[-80:]).decode(errors="replace")

    async def _terminate(self, waiting: asyncio.Task[int]) -> None:
        """SIGTERM to the container's main process; SIGKILL to all after the grace period."""
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        if self.proc is not None and self.proc.returncode is None and not self.gone:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiting), max(float(grace), 0.0))
        self._kill_all()

    # --- status ---
    async def _report(
        self, phase: str, state: Obj, *, ready: bool = False, last: Obj | None = None
    ) -> None:
        if self.gone:
            return
        image = self.container.get("image", "")
        container: Obj = {
            "name": self.container["name"],
            "image": image,
            "imageID": f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
            "ready": ready,
            "restartCount": self.restarts,
            "started": "running" in state,
            "state": state,
            "lastState": last or {},
        }
        if "waiting" not in state or self.restarts:
            container["containerID"] = f"facescan://{self.uid}-{self.restarts}"
        creating = state.get("waiting", {}).get("reason") == "ContainerCreating"
        conditions = [
            _condition("PodReadyToStartContainers", not creating),
            _condition("Initialized", True),
            _condition("ContainersReady", ready),
            _condition("Ready", ready),
        ]
        status: Obj = {
            "phase": phase,
            "startTime": self.started_at,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": conditions,
            "containerStatuses": [container],
        }
        try:
            await self.api.patch_status(self.status_path, status)
        except Exception as exc:  # never fail the pod on a status write
            log.warning("pod %s/%s: status not written: %s", self.ns, self.name, exc)

    async def _finalize(self) -> None:
        """The kubelet's last word on a deleted pod: remove the object (grace 0)."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}"
        with contextlib.suppress(Exception):
            await self.api.call("DELETE", path, body)

    async def _wait_or_deleted(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.deleting.wait(), seconds)
        return self.deleting.is_set()

    # --- processes and cgroups ---
    def _make_cgroup(self, limit: int | None) -> Path | None:
        if limit is None:
            return None
        if not (CGROUP_V1.is_dir() and os.access(CGROUP_V1, os.W_OK)):
            log.warning("no writable cgroup v1 memory controller: %s runs unlimited", self.name)
            return None
        path = CGROUP_V1 / f"{self.cluster.cgroup_prefix}-{self.uid}-{self.restarts}"
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit))
        for name, value in (("memory.memsw.limit_in_bytes", limit), ("memory.swappiness", 0)):
            if (path / name).exists():  # no swapping around the limit
                (path / name).write_text(str(value))
        return path

    def _oom_kills(self) -> int:
        if self.cgroup is None or not self.cgroup.exists():
            return 0
        text = (self.cgroup / "memory.oom_control").read_text()
        match = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(match[1]) if match else 0

    def _kill_all(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None and self.cgroup.exists():
            with contextlib.suppress(OSError):
                for pid in (self.cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None and self.cgroup.exists():
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()

    async def _cleanup(self) -> None:
        self._kill_all()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        for _ in range(100):
            if self.cgroup is None or not self.cgroup.exists():
                break
            self._kill_all()
            self._remove_cgroup()
            await asyncio.sleep(0.02)
        with contextlib.suppress(OSError):  # the root's mount point: empty on the host
            (self.dir / "root").rmdir()
