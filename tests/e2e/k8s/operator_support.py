"""Helpers of the operator's end-to-end tests: the real facescan operator (kopf with the
handlers of facescan_operator.k8s.handlers) run in the test's process against the real
control plane, with the credentials of the Helm chart's ServiceAccount (every API call it
makes is checked by real RBAC); FaceScan manifests over a library of real photographs on
a PersistentVolumeClaim; reads of the truth from the database and the API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Read by facescan_operator.k8s.handlers at import time: reconcile every second, and no
# Prometheus server (its registry is global; the tests start many operators).
os.environ.setdefault("FACESCAN_RECONCILE_INTERVAL_S", "1")
os.environ.setdefault("FACESCAN_METRICS_PORT", "0")

import asyncpg
import kopf
import kubernetes.config
import kubernetes_validate
import pytest
import yaml
from helm_python import Chart
from PIL import Image

from facescan_operator.k8s import handlers
from facescan_operator.k8s import reconcile as reconcile_module
from facescan_operator.k8s.reconcile import Outcome
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue

from .cluster import RESTRICTED, ROOT, Kube

SECRET = "facescan-db"
CLAIM = "photos"
MOUNT = "/library"
INTERVAL_S = handlers.INTERVAL_S
FACESCANS = "facescan.io/v1alpha1/facescans"
Obj = dict[str, Any]
POLICY: Obj = {
    "detectorImages": ["facescan-detector"],
    "pools": [
        {"name": "cpu", "nodeSelector": {"facescan.io/pool": "cpu"}},
        {
            "name": "gpu",
            "gpuResourceName": "nvidia.com/gpu",
            "gpuCount": 1,
            "gpuMemoryMiB": 16384,
            "maxMemoryMiB": 4096,
            "nodeSelector": {"facescan.io/pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    ],
}
"""The admin policy of the tests' chart: the images the node agent runs, and the dev
cluster's two nodes as pools (the chart's defaults keep hostPath out)."""


def _use_interval(seconds: float) -> None:
    """The timer reconciles every ``seconds`` even if handlers was imported before this
    module set FACESCAN_RECONCILE_INTERVAL_S (its decorator read it at import)."""
    from kopf._core.intents.handlers import TimerHandler

    for handler in kopf.get_default_registry()._spawning.get_all_handlers():
        if isinstance(handler, TimerHandler) and handler.interval != seconds:
            object.__setattr__(handler, "interval", seconds)  # a frozen dataclass


if INTERVAL_S > 1:
    INTERVAL_S = 1.0
    _use_interval(INTERVAL_S)


@dataclass(frozen=True)
class Tick:
    """One reconcile() the operator ran, as its handler saw it."""

    at: datetime
    created: list[str]
    oom_killed: int
    events: list[tuple[str, str, str]]


@dataclass
class Operator:
    """The real operator, kopf.operator() with the handlers' registry, in a thread with its
    own event loop, as in a process of its own (kopf cancels every task of its loop that
    it did not know at start-up when it stops: the test's tasks must not be among them).
    start(), stop(), start() again is a restart: the module state of a process (API
    client, breakers, locks, database pools) is reset."""

    monkeypatch: pytest.MonkeyPatch
    namespace: str
    kubeconfig: Path
    """The chart's ServiceAccount's credentials: what the operator may do, and no more."""
    health_port: int | None = None
    """Where kopf serves its liveness endpoint (/healthz), if anywhere."""
    env: dict[str, str] = field(default_factory=dict)
    """The environment the chart's Deployment gives the operator (its admin policy)."""
    ticks: list[Tick] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _memo: kopf.Memo = field(default_factory=kopf.Memo)

    def __post_init__(self) -> None:
        original = reconcile_module.reconcile

        async def recorded(*args: Any, **kwargs: Any) -> Outcome:
            outcome = await original(*args, **kwargs)
            created = [name for name, _ in outcome.created]
            tick = Tick(datetime.now(UTC), created, outcome.oom_killed, list(outcome.events))
            self.ticks.append(tick)
            return outcome

        self.monkeypatch.setattr(handlers, "reconcile", recorded)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        assert self._thread is None, "already running"
        self._reset()
        # kopf's login and the operator's ClusterApi read the kubeconfig from here
        self.monkeypatch.setenv("KUBECONFIG", str(self.kubeconfig))
        for name, value in self.env.items():
            self.monkeypatch.setenv(name, value)
        for module in (kubernetes.config, kubernetes.config.kube_config):
            self.monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", str(self.kubeconfig))
        self._stop, ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="operator")
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, 30):
            raise TimeoutError(f"the operator did not start: {self._error!r}")

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(
                kopf.operator(
                    registry=kopf.get_default_registry(),
                    namespaces=[self.namespace],
                    standalone=True,
                    liveness_endpoint=(
                        f"http://127.0.0.1:{self.health_port}/healthz" if self.health_port else None
                    ),
                    stop_flag=self._stop,
                    ready_flag=ready,
                    memo=self._memo,
                )
            )
        except BaseException as exc:
            self._error = exc
        finally:
            self._exit(loop, self._memo)

    @staticmethod
    def _exit(loop: asyncio.AbstractEventLoop, memo: kopf.Memo) -> None:
        """What the end of an operator process frees: pools its cleanup did not close,
        and the sockets of requests kopf had in flight when it was stopped (its API
        session, a database connection), collected here, in this loop, as at process
        exit, not later in whichever test the garbage collector happens to run in."""
        try:
            operator = memo.get("shared")
            for queue in list(operator.queues.values()) if operator is not None else []:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(queue.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
        finally:
            loop.close()

    async def stop(self) -> None:
        """Stops kopf as on SIGTERM (its cleanup handler closes the database pools)."""
        if self._thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 60)
        alive = self._thread.is_alive()
        self._thread = None
        assert not alive, "kopf did not stop within 60 s"
        if self._error is not None:
            raise RuntimeError(f"the operator failed: {self._error!r}") from self._error

    def _reset(self) -> None:
        """As a new process: a new memo (no API client, breakers, locks or pools)."""
        self._memo = kopf.Memo()

    def ticks_since(self, when: datetime) -> list[Tick]:
        return [t for t in self.ticks if t.at >= when]


# --- installed as a user installs it ---


@dataclass(frozen=True)
class Installed:
    kubeconfig: Path
    """A token of the chart's ServiceAccount: the operator's credentials."""
    env: dict[str, str]
    """The admin policy (FACESCAN_POLICY_*) the chart's Deployment gives the operator."""


def install(kube: Kube, tmp_path: Path, *, operator_pod: bool = False, **values: Any) -> Installed:
    """The chart rendered by the Helm SDK (watching the test's namespace only) and applied
    with kubectl into the namespace, which enforces the `restricted` Pod Security level:
    all of it with ``operator_pod`` (the operator then runs as the Deployment's pod on a
    node), else all but the Deployment (the test runs the operator itself, with the
    Deployment's ServiceAccount). Returns a kubeconfig with a token of the chart's
    ServiceAccount (`kubectl create token`), the operator's credentials, and the admin
    policy the Deployment would give it."""
    ns = kube.namespace
    kube.request("PATCH", f"/api/v1/namespaces/{ns}", {"metadata": {"labels": RESTRICTED}})
    release = f"{ns}-facescan"
    rendered = Chart.load(str(ROOT / "charts" / "facescan")).render(
        values={"watchNamespaces": [ns], "policy": POLICY} | values,
        name=release,
        namespace=ns,
    )
    docs = [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc and (operator_pod or doc["kind"] != "Deployment")
    ]
    all_docs = [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    (deployment,) = [doc for doc in all_docs if doc["kind"] == "Deployment"]
    env = {
        var["name"]: var["value"]
        for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if var["name"].startswith("FACESCAN_POLICY_")
    }
    kube.apply(*docs)
    token = kube.kubectl("create", "token", release, "--duration=2h").stdout.strip()
    config = tmp_path / "operator.kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{kube.cluster.server}', "
        f"certificate-authority: '{kube.cluster.ca}'}}}}]\n"
        f"users: [{{name: operator, user: {{token: '{token}'}}}}]\n"
        f"contexts: [{{name: c, context: {{cluster: c, user: operator, namespace: {ns}}}}}]\n"
        "current-context: c\n"
    )
    config.chmod(0o600)
    return Installed(config, env)


def library_claim(kube: Kube, root: Path, name: str = CLAIM) -> None:
    """The photo library as a user's NFS or CSI volume (read-only for the detectors)."""
    kube.claim(root, name, mode="ReadOnlyMany")


def secret(dsn: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "data": {"dsn": base64.b64encode(dsn.encode()).decode()},
    }


def facescan(name: str, **spec: Any) -> Obj:
    """A FaceScan over the library on the PVC, HOG only unless ``cascade`` says otherwise."""
    body: Obj = {
        "database": {"secretName": SECRET},
        "library": {
            "volume": {"persistentVolumeClaim": {"claimName": CLAIM, "readOnly": True}},
            "mountPath": MOUNT,
            "rescanIntervalSeconds": 0,  # the tests register what they scan (register())
        },
        "detector": {"image": "facescan-detector:e2e", "imagePullPolicy": "Never"},
        "cascade": [{"model": "hog", "scale": 1.0}],
        "leaseSeconds": 60,
        "imageTimeoutSeconds": 120,
    }
    body.update(spec)
    return {
        "apiVersion": "facescan.io/v1alpha1",
        "kind": "FaceScan",
        "metadata": {"name": name},
        "spec": body,
    }


async def apply(kube: Kube, *objects: Obj) -> None:
    """`kubectl apply -f` of the objects (the real kubectl, as admin)."""
    await kube.aapply(*objects)


async def delete_facescan(kube: Kube, name: str) -> None:
    """`kubectl delete facescan NAME` (the real kubectl), which waits for the operator to
    remove its finalizer: up to 90 s, as a loaded CI machine once took over 30."""
    await kube.akubectl("delete", "facescan", name, "--timeout=90s", timeout=120)


# --- the library ---


async def register(queue: Queue, library: str, root: Path, names: Iterable[str]) -> None:
    """Registers the files as the operator's `facescan register` would: sizes from headers."""
    images = []
    for name in names:
        with Image.open(root / name) as image:
            width, height = image.size
        images.append(NewImage(name, width, height, (root / name).stat().st_size))
    await queue.ensure_library(library)
    assert await queue.register(library, images) == len(images)


# --- reads ---


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def duplicated_faces(dsn: str) -> list[asyncpg.Record]:
    """Done images whose face rows differ from their detection's count or their own."""
    return await fetch(
        dsn,
        "SELECT i.path, i.face_count, d.face_count AS detected, "
        "  (SELECT count(*) FROM facescan.faces f WHERE f.image_id = i.id) AS rows "
        "FROM facescan.images i LEFT JOIN facescan.detections d ON d.image_id = i.id "
        "WHERE i.state = 'done' AND (d.image_id IS NULL OR NOT (i.face_count = d.face_count "
        "  AND d.face_count = (SELECT count(*) FROM facescan.faces f WHERE f.image_id = i.id)))",
    )


async def attempts(dsn: str) -> list[asyncpg.Record]:
    return await fetch(
        dsn,
        "SELECT i.path, a.worker, a.step, a.model, a.outcome::text AS outcome, "
        "  a.error_type::text AS error_type, a.error, a.started_at, a.finished_at "
        "FROM facescan.attempts a JOIN facescan.images i ON i.id = a.image_id ORDER BY a.id",
    )


def status(kube: Kube, name: str) -> Obj:
    scan = kube.get(FACESCANS, name) or {}
    return dict(scan.get("status") or {})


def phase(kube: Kube, name: str) -> str:
    return str(status(kube, name).get("phase") or "")


def events(kube: Kube, reason: str | None = None) -> list[Obj]:
    found = kube.objects("v1/events")
    return [e for e in found if reason in (None, e.get("reason"))]


def jobs(kube: Kube, scan: str) -> list[Obj]:
    return kube.objects("batch/v1/jobs", labels=f"facescan.io/scan={scan}")


def finished(job: Obj) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or ()
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
    )


def created_jobs(kube: Kube) -> list[Obj]:
    """Every Job created through the API (the API server's audit log), deleted or not."""
    return kube.created("batch/v1/jobs")


def validate_jobs(manifests: Iterable[Obj], version: str = "1.30") -> int:
    """kubernetes-validate (strict) on each manifest; returns how many were checked."""
    checked = 0
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    return checked


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Polls check() (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
