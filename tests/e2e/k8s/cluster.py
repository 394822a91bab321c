"""End-to-end harness: the Kubernetes API as a kmock emulator on a localhost port, reachable
by the real kubectl, the kubernetes client and kopf through a kubeconfig, and an in-test
kubelet that runs each Job's first container as a local subprocess under a memory cgroup.

Not emulated: scheduling, nodes, images, securityContext (processes run as the test user),
volumes (a container sees the host's files, so a hostPath mounted at its own path works and
other volume types are ignored), envFrom, garbage collection (except the pods of a deleted
Job), ttlSecondsAfterFinished, admission, validation, defaulting, PUT, server-side apply,
protobuf (imperative `kubectl create ns x` fails; `kubectl apply -f` works), Table output
(`kubectl get` prints NAME and AGE only, no additionalPrinterColumns).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import gzip
import hashlib
import importlib.resources
import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = dict[str, Any]

CRD_FILE = Path(__file__).resolve().parents[3] / "crds" / "facescan.yaml"
VENV_BIN = Path(sys.prefix) / "bin"
KUBECTL = shutil.which("kubectl", path=f"{VENV_BIN}{os.pathsep}{os.defpath}") or "kubectl"
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
# Used when crds/facescan.yaml does not exist (yet).
FALLBACK_CRD: Obj = {
    "spec": {
        "group": "facescan.io",
        "scope": "Namespaced",
        "names": {"kind": "FaceScan", "plural": "facescans", "singular": "facescan"}
        | {"shortNames": ["fs"]},
        "versions": [{"name": "v1alpha1", "served": True, "subresources": {"status": {}}}],
    }
}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: e2e, cluster: {{server: "{url}"}}}}]
users: [{{name: e2e, user: {{token: "{token}"}}}}]
contexts: [{{name: e2e, context: {{cluster: e2e, user: e2e, namespace: default}}}}]
current-context: e2e
"""
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "K": 10**3}
_UNITS |= {"M": 10**6, "G": 10**9, "T": 10**12}
_NS_HACK = "--namespaces--"  # see Emulator.__call__
_SEL_TERM = re.compile(r"(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\((.*)\))?")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=n))  # like Kubernetes'


def parse_quantity(text: str | int | None) -> int | None:
    """Bytes of a Kubernetes quantity: '100Mi', '1.5Gi', '2G', '500k', '1e9', '1048576'."""
    if text is None:
        return None
    match = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?", str(text).strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    return int(float(match[1]) * _UNITS.get(match[2] or "", 1))


def _lookup(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def selected(obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    """Whether an object passes a list/watch's labelSelector and fieldSelector."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in re.split(r",(?![^()]*\))", params.get("labelSelector", "")):
        if not term.strip():
            continue
        m = _SEL_TERM.fullmatch(term.strip())
        if m is None:
            raise kmock.KubernetesError(400, "BadRequest", f"bad label selector: {term!r}")
        neg, key, op, val, setop, values = m.groups()
        value = labels.get(key)
        options = {v.strip() for v in (values or "").split(",")}
        ok = {
            None: key in labels,
            "=": value == val,
            "==": value == val,
            "!=": value != val,
            "in": value in options,
            "notin": value not in options,
        }[op or setop]
        if ok == bool(neg):
            return False
    for term in filter(None, params.get("fieldSelector", "").split(",")):
        path, op, val = re.split(r"(!=|==|=)", term, maxsplit=1)
        found = _lookup(obj, path.strip())
        if (str(found if found is not None else "") == val) != (op != "!="):
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the few fixes that real clients need (see FACTS.md)."""

    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    logs: dict[tuple[str, str], Path] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # The kubelet's container logs, for `kubectl logs` and read_namespaced_pod_log.
        self["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << self._serve_log
        # kmock streams watches as application/octet-stream: client-go (kubectl delete/wait/
        # get -w) then fails with "no stream serializers registered". Same stream, typed.
        typed = self.fallback**1  # above kmock's own fallback for watches
        typed[kmock.action.WATCH] << {"Content-Type": "application/json"} << self._serve_watch

    def declare_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CRD's resource (kmock knows only the resources declared to it)."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if version.get("served", True):
                self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = (
                    kmock.ResourceInfo(
                        kind=names["kind"],
                        singular=names.get("singular") or names["kind"].lower(),
                        shortnames=names.get("shortNames") or (),
                        categories=names.get("categories") or (),
                        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                        verbs=VERBS,
                        subresources=version.get("subresources") or {},
                    )
                )

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's URL parser fails (500) on /api/v1/namespaces[/name[/sub]]: it reads
        # "namespaces" as a namespace prefix. Parse it as a placeholder namespace's URL and
        # make it cluster-scoped again in _handle().
        if m := re.fullmatch(r"/api/v1/namespaces(/[^/]+(?:/status|/finalize)?)?", raw.path):
            query = f"?{raw.query_string}" if raw.query_string else ""
            raw = raw.clone(rel_url=f"/api/v1/namespaces/{_NS_HACK}/namespaces{m[1] or ''}{query}")
        return await super().__call__(raw)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.namespace == _NS_HACK:  # kmock matches reactions by request identity
            fixed = attrs.evolve(request, namespace=None)
            self._requests[:] = [fixed if r is request else r for r in self._requests]
            request = fixed
        data = request.data
        if request.resource is not None and request.action == kmock.action.CREATE:
            if isinstance(data, dict):  # clients (kubectl, kopf) expect these on every object
                meta = data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):  # kmock: 500 otherwise
                    meta["name"] = meta["generateName"] + random_suffix()
                if request.namespace:
                    meta.setdefault("namespace", request.namespace)
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now())
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(self._rv))
        elif request.resource is not None and request.action == kmock.action.UPDATE:
            rv = str(next(self._rv))  # a changed object gets a new resourceVersion
            if isinstance(data, dict):
                data.setdefault("metadata", {})["resourceVersion"] = rv
            elif isinstance(data, list):  # a JSON patch
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchException as exc:  # a failed "test" op: Kubernetes says 422,
            raise kmock.KubernetesError(422, "Invalid", str(exc)) from exc  # kopf then retries
        created = request.resource == CRDS and request.action == kmock.action.CREATE
        if created and response.status < 300 and isinstance(data, dict):  # kubectl apply crds/
            self.declare_crd(data)
        return response

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        payload = cast(Obj, await super()._serve_version(request))
        assert request.resource is not None
        if request.resource.group == "":  # kmock says "/v1": client-go (kubectl, helm) rejects it
            payload["groupVersion"] = request.resource.version
        for item in payload["resources"]:  # kmock copies these onto subresources: kubectl
            if "/" in item["name"]:  # then warns "short name fs could also match ..."
                item.update(shortNames=[], categories=[], singularName="")
        return payload

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        payload = cast(Obj, await super()._serve_list(request))
        res = request.resource
        assert res is not None
        # kopf and the kubernetes client read kind/apiVersion of lists; kmock sends none
        payload["kind"] = f"{self._kind(res)}List"
        payload["apiVersion"] = _api_version(res)
        payload["metadata"]["resourceVersion"] = str(next(self._rv))
        # kmock ignores selectors; the operator lists its Jobs and pods by labels
        payload["items"] = [item for item in payload["items"] if selected(item, request.params)]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # kmock's, plus: selectors (as for lists); no event lost between the replay and the
        # live stream (the bus is marked under the same lock); and the BOOKMARK that client-go's
        # streaming lists (kubectl delete/wait/get -w: sendInitialEvents=true) wait for.
        yield b""
        res, params = request.resource, request.params
        assert res is not None
        bus = self._buses[res]

        def seen(obj: Obj) -> bool:
            meta = obj.get("metadata") or {}
            where = request.namespace in (None, meta.get("namespace"))
            return where and request.name in (None, meta.get("name")) and selected(obj, params)

        async with self._lock:
            mark = await bus.mark()
            objs = [o.raw for (r, _, _), o in self.objects.items() if r == res and not o.deleted]
        try:
            for obj in filter(seen, objs):
                yield {"type": "ADDED", "object": obj}
            if params.get("sendInitialEvents") == "true":
                end: Obj = {"annotations": {"k8s.io/initial-events-end": "true"}}
                end["resourceVersion"] = str(next(self._rv))
                kind = {"kind": self._kind(res), "apiVersion": _api_version(res)}
                yield {"type": "BOOKMARK", "object": kind | {"metadata": end}}
            async for event in bus.stream(since=mark):
                if seen(event["object"]):
                    yield event
        finally:
            await bus.unmark(mark)

    def _kind(self, res: kmock.resource) -> str:
        # not .get(): kmock's ResourcesArray creates a missing key on access
        info = self.resources[res] if res in self.resources else None  # noqa: SIM401
        return info.kind if info is not None and info.kind else str(res.plural).capitalize()

    async def _serve_log(self, request: kmock.Request) -> bytes:
        path = self.logs.get((request.namespace or "", request.name or ""))
        if path is None or not path.exists():
            raise kmock.KubernetesObjectNotFoundError()
        return path.read_bytes()


class ApiError(Exception):
    def __init__(self, status: int, payload: Any) -> None:
        super().__init__(f"HTTP {status}: {payload}")
        self.status = status


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.output}\nstderr: {self.stderr}"


class Cluster:
    """The emulator served on 127.0.0.1 from its own thread and event loop, so that blocking
    clients (kubectl, the kubernetes client) work from sync and async tests alike."""

    def __init__(self, workdir: Path, *, crd_file: Path = CRD_FILE, token: str = "e2e") -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.token = token
        self.crd_file = crd_file
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="k8s-api", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.emulator: Emulator

    def start(self) -> Cluster:
        self._thread.start()
        self.url = self.call(self._start())
        self.kubeconfig.write_text(KUBECONFIG.format(url=self.url, token=self.token))
        return self

    async def _start(self) -> str:
        self.emulator = Emulator()
        # = resources.load_bundled(), minus its DeprecationWarning (importlib read_binary)
        bundled = importlib.resources.files("kmock._internal") / "resources.json.gz"
        self.emulator.resources.load_data(gzip.decompress(bundled.read_bytes()))
        exists = self.crd_file.exists()
        crd = yaml.safe_load(self.crd_file.read_text()) if exists else FALLBACK_CRD
        self.emulator.declare_crd(crd)
        await self._stack.enter_async_context(self.emulator)
        server = await self._stack.enter_async_context(kmock.Server(self.emulator))
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
        await self.arequest("POST", "/api/v1/namespaces", namespace)
        return str(server.url).rstrip("/")

    def stop(self) -> None:
        async def shutdown() -> None:
            # First end what still runs here (watch streams of a client that was not stopped,
            # the kubelet): aiohttp would wait up to 60 s for open connections to close.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stack.aclose()

        self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine in the emulator's loop (never from inside that loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against the emulator (a private discovery cache per cluster)."""
        argv = [KUBECTL, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.workdir}/.kube"]
        proc = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    async def akubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """kubectl without blocking the caller's event loop (e.g. where kopf runs)."""
        return await asyncio.to_thread(self.kubectl, *args, **kwargs)

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient on this cluster (without touching global config)."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))  # type: ignore[no-untyped-call]

    async def arequest(self, method: str, path: str, body: Any = None) -> Any:
        """An HTTP call to the emulator, from inside its loop; PATCH is a JSON merge patch."""
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        async with self.emulator.request(
            method, path, json=body, headers={"Content-Type": ctype}
        ) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ApiError(resp.status, payload)
            return payload

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(self.arequest(method, path, body))

    def create(self, obj: Obj) -> Obj:
        """POST an object to the resource that serves its apiVersion and kind."""
        meta = obj.get("metadata") or {}
        for key in list(self.emulator.resources):
            res = kmock.resource(key)
            info = self.emulator.resources[res]
            if info.kind == obj["kind"] and _api_version(res) == obj["apiVersion"]:
                prefix = f"/apis/{res.group}" if res.group else "/api"
                ns = f"/namespaces/{meta.get('namespace', 'default')}" if info.namespaced else ""
                path = f"{prefix}/{res.version}{ns}/{res.plural}"
                return cast(Obj, self.request("POST", path, obj))
        raise LookupError(f"no resource serves {obj['apiVersion']} {obj['kind']}")

    def objects(self, resource: str, namespace: str | None = None, labels: str = "") -> list[Obj]:
        """Copies of the live objects, e.g. objects('v1/pods', 'ns', labels='job-name=x')."""

        async def read() -> list[Obj]:
            res = kmock.resource(resource)
            return [
                copy.deepcopy(obj.raw)
                for (r, ns, _), obj in self.emulator.objects.items()
                if r == res and not obj.deleted and namespace in (None, ns)
                if selected(obj.raw, {"labelSelector": labels})
            ]

        return self.call(read())

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        found = self.objects(resource, namespace)
        return next((o for o in found if o["metadata"]["name"] == name), None)

    async def wait_for(
        self, check: Callable[[], T | None], timeout: float = 15, what: str = "condition"
    ) -> T:
        """Poll check() until it returns something truthy; async so kopf keeps running."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (result := check()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)
        return result


@dataclass
class PodRun:
    namespace: str
    name: str
    container: str
    image: str
    log: Path
    started: str = ""
    conditions: list[Obj] = field(default_factory=list)  # extra ones, e.g. DisruptionTarget
    last: tuple[str, Obj, bool] = ("Pending", {}, False)  # phase, state, ready
    proc: asyncio.subprocess.Process | None = None
    cgroup: Path | None = None
    gone: bool = False  # the pod object was deleted


class Kubelet:
    """Job controller + kubelet in the cluster's loop: one pod at a time per Job
    (completions 1, backoffLimit retries without delay, activeDeadlineSeconds), the first
    container's command + args run as a subprocess with its env, workingDir and memory limit.
    """

    node = "e2e-node"

    def __init__(self, cluster: Cluster, *, base_env: Mapping[str, str] | None = None) -> None:
        self.cluster = cluster
        self.emu = cluster.emulator
        self.jobs: dict[tuple[str, str], tuple[str, asyncio.Task[None]]] = {}
        self.pods: dict[tuple[str, str], PodRun] = {}
        self.errors: list[BaseException] = []
        self.cgroups = CGROUP_V1.is_dir() and os.access(CGROUP_V1, os.W_OK)
        # A container does not inherit the test's environment: only these, then its own env.
        self.base_env = {
            k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")
        } | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
        self.base_env |= base_env or {}
        self._task: asyncio.Task[None] | None = None

    # --- the test-facing API (call from the test's thread) ---
    def start(self) -> Kubelet:
        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(self._guard(self._loop()))  # its failure fails the test

        self._task = self.cluster.call(start())
        return self

    def stop(self) -> None:
        """Kill every process, remove the cgroups; raise what went wrong in the kubelet."""
        self.cluster.call(self._stop())
        if self.errors:
            raise RuntimeError(f"the e2e kubelet failed: {self.errors!r}") from self.errors[0]

    def preempt(self, namespace: str, pod: str) -> None:
        """As if the scheduler preempted the pod: DisruptionTarget condition, then killed."""
        self.cluster.call(self._preempt(namespace, pod))

    def kill(self, namespace: str, pod: str) -> None:
        """SIGKILL the pod's processes, as if its node died: exit 137, reason Error."""
        self._signal(self.pods[namespace, pod])

    def pid(self, namespace: str, pod: str) -> int | None:
        """The pid of a pod's running process (None before it starts and after it ends)."""
        run = self.pods.get((namespace, pod))
        return run.proc.pid if run and run.proc and run.proc.returncode is None else None

    def logs(self, namespace: str, pod: str) -> str:
        path = self.emu.logs.get((namespace, pod))
        return path.read_text(errors="replace") if path and path.exists() else ""

    # --- inside the cluster's loop ---
    async def _loop(self) -> None:
        while True:
            jobs, pods = {}, set()
            for (res, ns, name), obj in list(self.emu.objects.items()):
                if res == JOBS and not obj.deleted:
                    jobs[ns or "", name] = obj.raw
                elif res == PODS and not obj.deleted:
                    pods.add((ns or "", name))
            for key, (uid, task) in list(self.jobs.items()):  # deleted (or re-created) Jobs
                job = jobs.get(key)
                if job is None or job["metadata"].get("uid") != uid:
                    del self.jobs[key]
                    await self._delete_job(key, task)
            for key, job in jobs.items():
                spec, status = job.get("spec") or {}, job.get("status") or {}
                ended = {c.get("type") for c in status.get("conditions") or ()}
                if key in self.jobs or spec.get("suspend") or ended & {"Complete", "Failed"}:
                    continue  # running, suspended, or finished already
                task = asyncio.create_task(self._guard(self._run_job(job)))
                self.jobs[key] = (job["metadata"].get("uid", ""), task)
            for key, run in list(self.pods.items()):  # pods deleted under a running process
                if key not in pods and not run.gone:
                    run.gone = True
                    self._signal(run)
            await asyncio.sleep(0.05)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception as exc:
            log.exception("e2e kubelet")
            self.errors.append(exc)

    async def _stop(self) -> None:
        tasks = [task for _, task in self.jobs.values()] + ([self._task] if self._task else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _delete_job(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        task.cancel()  # kills its process (see _run_pod); no GC here, so delete its pods too
        await asyncio.gather(task, return_exceptions=True)
        ns, name = key
        for pod in self._objects(PODS, ns, f"job-name={name}"):
            with contextlib.suppress(ApiError):
                path = f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}"
                await self.cluster.arequest("DELETE", path)

    def _objects(self, res: kmock.resource, ns: str, labels: str) -> list[Obj]:
        return [
            obj.raw
            for (r, n, _), obj in list(self.emu.objects.items())
            if r == res and n == ns and not obj.deleted
            if selected(obj.raw, {"labelSelector": labels})
        ]

    async def _run_job(self, job: Obj) -> None:
        meta, spec = job["metadata"], job["spec"]
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        loop = asyncio.get_running_loop()
        deadline = spec.get("activeDeadlineSeconds")
        ends = loop.time() + deadline if deadline is not None else None
        await self._patch(path, {"startTime": now(), "active": 1})
        failed = 0
        while True:
            code = await self._run_pod(job, None if ends is None else max(0, ends - loop.time()))
            status: Obj = {"active": 0, "ready": 0}
            if code == 0:
                status |= {"succeeded": 1, "completionTime": now()}
                status["conditions"] = [_condition("Complete", "", "")]
            else:
                failed += 1
                status["failed"] = failed
                expired = ends is not None and loop.time() >= ends
                if expired:
                    message = "Job was active longer than specified deadline"
                    status["conditions"] = [_condition("Failed", "DeadlineExceeded", message)]
                elif failed > spec.get("backoffLimit", 6):
                    message = "Job has reached the specified backoff limit"
                    status["conditions"] = [_condition("Failed", "BackoffLimitExceeded", message)]
                else:
                    status = {"failed": failed}  # the next pod follows at once (no backoff)
            await self._patch(path, status)
            if "conditions" in status:
                return

    async def _run_pod(self, job: Obj, timeout: float | None) -> int:
        jmeta, template = job["metadata"], job["spec"]["template"]
        ns, jname, juid = jmeta["namespace"], jmeta["name"], jmeta.get("uid", "")
        container = template["spec"]["containers"][0]
        name = f"{jname}-{random_suffix()}"
        labels = (template.get("metadata") or {}).get("labels") or {}
        labels = labels | {"job-name": jname, "batch.kubernetes.io/job-name": jname}
        labels |= {"controller-uid": juid, "batch.kubernetes.io/controller-uid": juid}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": jname, "uid": juid}
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels}
            | {"ownerReferences": [owner | {"controller": True, "blockOwnerDeletion": True}]},
            "spec": template["spec"] | {"nodeName": self.node},
        }
        pod = await self.cluster.arequest("POST", f"/api/v1/namespaces/{ns}/pods", pod)
        run = PodRun(ns, name, container["name"], container.get("image", ""), self._log(ns, name))
        self.pods[ns, name] = run
        self.emu.logs[ns, name] = run.log
        run.started = now()
        try:
            await self._status(run, "Pending", {"waiting": {"reason": "ContainerCreating"}})
            try:
                env = self._env(ns, container, pod)
            except LookupError as exc:  # a real kubelet keeps it Pending: until the deadline
                waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                await self._status(run, "Pending", {"waiting": waiting})
                await asyncio.sleep(timeout if timeout is not None else 10**9)
                return -1
            argv = container.get("command", []) + container.get("args", [])
            argv = [_expand(arg, env) for arg in argv]
            exe = shutil.which(argv[0], path=env["PATH"]) if argv else None
            if exe is None:
                message = f"executable not found: {argv[:1]} (the harness needs a command)"
                state = {"terminated": {"exitCode": 128, "reason": "StartError"}}
                state["terminated"]["message"] = message
                await self._status(run, "Failed", state)
                return 128
            argv[0] = exe
            limits = (container.get("resources") or {}).get("limits") or {}
            run.cgroup = self._cgroup(run, parse_quantity(limits.get("memory")))
            if run.cgroup is not None:
                # The child joins its cgroup before exec. A shell does it rather than a Python
                # preexec_fn: this process has threads, where preexec_fn can deadlock.
                join = 'echo $$ > "$0" && exec "$@"'
                argv = ["/bin/sh", "-c", join, str(run.cgroup / "cgroup.procs"), *argv]
            with run.log.open("ab") as out:
                run.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=container.get("workingDir") or self.cluster.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as a whole
                )
            started = now()
            await self._status(run, "Running", {"running": {"startedAt": started}}, ready=True)
            try:
                rc = await asyncio.wait_for(run.proc.wait(), timeout)
            except TimeoutError:  # activeDeadlineSeconds
                self._signal(run)
                rc = await run.proc.wait()
            code = 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, like a shell
            reason = "OOMKilled" if self._oom_kills(run) else "Completed" if code == 0 else "Error"
            terminated = {"exitCode": code, "reason": reason, "startedAt": started}
            terminated["finishedAt"] = now()
            phase = "Succeeded" if code == 0 else "Failed"
            await self._status(run, phase, {"terminated": terminated})
            return code
        finally:
            # A deleted Job cancels this task at any await, the clean-up's own included (the
            # cgroup of a process that just exited is busy for a moment): it runs to the end.
            reaping = asyncio.ensure_future(self._reap(run))
            try:
                await asyncio.shield(reaping)
            except asyncio.CancelledError:
                await reaping
                raise

    async def _reap(self, run: PodRun) -> None:
        """Kill the pod's processes, wait for them, remove its cgroup, forget it."""
        if run.proc is not None and run.proc.returncode is None:
            self._signal(run)
            await run.proc.wait()
        await self._rmdir(run)
        self.pods.pop((run.namespace, run.name), None)

    def _log(self, ns: str, name: str) -> Path:
        (self.cluster.workdir / "pods").mkdir(exist_ok=True)
        return self.cluster.workdir / "pods" / f"{ns}_{name}.log"

    async def _status(self, run: PodRun, phase: str, state: Obj, ready: bool = False) -> None:
        run.last = (phase, state, ready)
        image_id = hashlib.sha256(run.image.encode()).hexdigest()
        container = {  # every field the kubernetes client's strict models require
            "name": run.container,
            "image": run.image,
            "imageID": f"{run.image}@sha256:{image_id}",
            "containerID": f"containerd://{hashlib.sha256(run.name.encode()).hexdigest()}",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }
        truth = "True" if ready else "False"
        conditions = [_condition(t, "", "", "True") for t in ("PodScheduled", "Initialized")]
        conditions += [_condition(t, "", "", truth) for t in ("ContainersReady", "Ready")]
        status: Obj = {"phase": phase, "startTime": run.started, "hostIP": "127.0.0.1"}
        status |= {"podIP": "127.0.0.1", "conditions": conditions + run.conditions}
        status["containerStatuses"] = [container]
        if not run.gone:
            await self._patch(f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status", status)

    async def _patch(self, path: str, status: Obj) -> None:
        try:
            await self.cluster.arequest("PATCH", path, {"status": status})
        except ApiError as exc:  # deleted meanwhile: fine, as for a real kubelet
            if exc.status != 404:
                raise

    def _env(self, ns: str, container: Obj, pod: Obj) -> dict[str, str]:
        env = self.base_env | {"HOSTNAME": pod["metadata"]["name"]}
        for var in container.get("env") or ():
            value_from = var.get("valueFrom") or {}
            if "value" in var or not value_from:
                env[var["name"]] = _expand(var.get("value", ""), env)
            elif "fieldRef" in value_from:
                env[var["name"]] = str(_lookup(pod, value_from["fieldRef"]["fieldPath"]) or "")
            else:
                kind = "secrets" if "secretKeyRef" in value_from else "configmaps"
                ref = value_from.get("secretKeyRef") or value_from.get("configMapKeyRef") or {}
                data = self._data(kind, ns, ref["name"], ref.get("optional", False))
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]]
                elif not ref.get("optional", False):
                    raise LookupError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
        return env

    def _data(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str]:
        found = self._objects(kmock.resource("", "v1", kind), ns, "")
        obj = next((o for o in found if o["metadata"]["name"] == name), None)
        if obj is None:
            if optional:
                return {}
            raise LookupError(f'{kind[:-1]} "{name}" not found')
        data = dict(obj.get("data") or {})
        if kind == "secrets":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data | dict(obj.get("stringData") or {})  # the emulator keeps stringData as is

    def _cgroup(self, run: PodRun, limit: int | None) -> Path | None:
        if limit is None:
            return None
        if not self.cgroups:
            log.warning("no writable cgroup v1 memory controller: %s runs unlimited", run.name)
            return None
        path = CGROUP_V1 / f"facescan-e2e-{os.getpid()}-{run.namespace}-{run.name}"
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit))
        for name, value in (("memory.memsw.limit_in_bytes", limit), ("memory.swappiness", 0)):
            if (path / name).exists():  # no swapping around the limit
                (path / name).write_text(str(value))
        return path

    def _oom_kills(self, run: PodRun) -> int:
        if run.cgroup is None:
            return 0
        text = (run.cgroup / "memory.oom_control").read_text()
        match = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(match[1]) if match else 0

    def _signal(self, run: PodRun) -> None:
        if run.proc is not None and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGKILL)
        if run.cgroup is not None and run.cgroup.exists():
            for pid in (run.cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    async def _rmdir(self, run: PodRun) -> None:
        for _ in range(100):
            if run.cgroup is None or not run.cgroup.exists():
                return
            self._signal(run)
            with contextlib.suppress(OSError):
                run.cgroup.rmdir()
            await asyncio.sleep(0.02)
        log.warning("could not remove %s", run.cgroup)

    async def _preempt(self, ns: str, pod: str) -> None:
        run = self.pods[ns, pod]
        message = "Preempted in order to admit critical pod"
        run.conditions.append(_condition("DisruptionTarget", "PreemptionByScheduler", message))
        await self._status(run, *run.last)
        self._signal(run)


def _api_version(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


def _condition(type_: str, reason: str, message: str, status: str = "True") -> Obj:
    condition = {"type": type_, "status": status, "lastTransitionTime": now()}
    return condition | ({"reason": reason, "message": message} if reason else {})


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )
