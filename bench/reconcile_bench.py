"""Reconcile benchmark: the operator's tick over a FaceScan of 1,000,000 images.

Runs the operator's real reconcile() (facescan_operator.k8s.reconcile, what the kopf
timer calls) against a real PostgreSQL holding 1,000,000 registered images and a real
Kubernetes control plane (scripts/dev-cluster's kube-apiserver, scheduler and
controller-manager, reached through the real kubernetes client). The bench itself plays
the kubelet of one Node: each pod the real Job controller creates and the real scheduler
binds is "run" by doing its detector's work through the queue (start, commit 0-2 faces),
then its status is written (Succeeded, or Running for Jobs kept at work); one is
OOMKilled instead, with one image started. The real Job controller then completes the
Jobs and the real garbage collector removes the pods of deleted ones.

Prints, measured in this one run on this machine:
  - reconcile time per tick, median and 95th percentile (target <= 200 ms), and the
    part of it spent in the database (status, groups, leases, claims), for the usual tick
    (Jobs at work) and for the busiest (every Job ended and replaced: 2 x parallelism
    Job deletions and creations);
  - the most Jobs that existed at once against parallelism + those finished within their
    TTL (API objects stay O(parallelism), not O(images));
  - how many ticks after the OOMKill the culprit was in a new Job at the next cascade step
    (target: the very tick that saw the kill).

Usage: python bench/reconcile_bench.py [--images 1000000] [--ticks 40] [--parallelism 8]
Without --dsn it starts an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import asyncpg  # noqa: E402
import kubernetes.config  # noqa: E402
from queue_bench import _faces, _images  # noqa: E402

from facescan_devcluster import controlplane  # noqa: E402
from facescan_operator.breaker import CircuitBreaker  # noqa: E402
from facescan_operator.k8s.decide import policy_of  # noqa: E402
from facescan_operator.k8s.jobs import ScanRef  # noqa: E402
from facescan_operator.k8s.reconcile import Outcome, reconcile  # noqa: E402
from facescan_operator.k8s.spec import FaceScanSpec  # noqa: E402
from facescan_operator.sizing import CalibrationTable  # noqa: E402
from facescan_queue.migrate import migrate  # noqa: E402
from facescan_queue.models import DetectionResult, LibraryPolicy  # noqa: E402
from facescan_queue.repository import Queue  # noqa: E402
from facescan_queue.settings import DatabaseSettings  # noqa: E402
from tests.e2e.k8s.cluster import ApiError, Kube  # noqa: E402

NS, NAME, UID = "photos", "family", "5f1c0e5e-bench"
LIBRARY = f"{NS}/{NAME}"
TARGET_MS = 200.0
Obj = dict[str, Any]


def _spec(parallelism: int, batch_size: int, ttl: int) -> FaceScanSpec:
    return FaceScanSpec.model_validate(
        {
            "database": {"secretName": "facescan-db"},
            "library": {
                "volume": {"persistentVolumeClaim": {"claimName": "photos"}},
                "rescanIntervalSeconds": 0,  # the bench registers the images itself
            },
            "detector": {"image": "ghcr.io/facescan/detector:0.1.0"},
            "cascade": [
                {"model": "cnn", "scale": 1.0},
                {"model": "cnn", "scale": 0.5},
                {"model": "hog", "scale": 1.0},
            ],
            "parallelism": parallelism,
            "batchSize": batch_size,
            "ttlSecondsAfterFinished": ttl,
            "nodePools": [
                {
                    "name": "gpu",
                    "models": ["cnn"],
                    "gpuResourceName": "nvidia.com/gpu",
                    "gpuCount": 1,
                    "maxMemoryMiB": 16384,
                },
                {"name": "cpu", "models": ["hog"]},
            ],
        }
    )


class Nodes:
    """The kubelet of one Node: each pod bound to it is run by doing its detector's work
    in the queue, then its status is written through the API, as a kubelet writes it."""

    node = "bench-node"

    def __init__(self, kube: Any, queue: Queue) -> None:
        self.kube = kube
        self.queue = queue
        self.handled: set[str] = set()
        self.ended: set[str] = set()  # Jobs whose pod this node ended
        self.oom_job: str | None = None
        self.oom_image: int | None = None
        self.rng = random.Random(3)

    def register(self) -> None:
        """A Ready Node with room for every Job (the scheduler binds the pods to it)."""
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node}}
        self.kube.request("POST", "/api/v1/nodes", node)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000", "nvidia.com/gpu": "1000"}
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
        ready |= {"lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        status = {"capacity": capacity, "allocatable": capacity, "conditions": [ready]}
        self.kube.request("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": status})
        # the photo library, as the FaceScan names it: a claim bound to a volume
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "photos"},
            "spec": {
                "capacity": {"storage": "1Ti"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": "/srv/photos"},
                "claimRef": {"namespace": NS, "name": "photos"},
            },
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "photos", "namespace": NS},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": "photos",
                "resources": {"requests": {"storage": "1Ti"}},
            },
        }
        self.kube.create(pv)
        self.kube.create(pvc)
        self.heartbeat()

    def heartbeat(self) -> None:
        """Renew the Node's Lease, as a kubelet does (else the node lifecycle controller
        marks it NotReady and nothing more is scheduled on it)."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": stamp},
        }
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        try:
            self.kube.request("PATCH", path, lease)
        except ApiError:
            self.kube.create(lease)

    async def run_jobs(self, kill_one: bool, finish: bool = True) -> None:
        """Runs the new Jobs' pods: to their end (``finish``), or only into their first
        image (they stay running: the operator's usual tick sees Jobs at work)."""
        self.heartbeat()
        for job in self.kube.objects("batch/v1/jobs", NS):
            name = job["metadata"]["name"]
            if name in self.handled:
                continue
            pod = await self._bound_pod(name)
            if pod is None:
                continue  # not created or not bound yet: next time
            self.handled.add(name)
            await self._claim(job)
            if kill_one and self.oom_job is None:
                started = await self.queue.start_next(name)
                assert started is not None
                self.oom_job, self.oom_image = name, started.image_id
                self._status(pod, "OOMKilled", 137)
                self.ended.add(name)
                continue
            image = await self.queue.start_next(name)
            if not finish:
                self._status(pod, "", None)
                continue
            while image is not None:
                result = DetectionResult(_faces(self.rng), 1280, 900, 4032, 3024)
                image = await self.queue.complete_and_start_next(image.image_id, name, result)
            await self.queue.release(name)
            self._status(pod, "Completed", 0)
            self.ended.add(name)

    async def _claim(self, job: Obj) -> None:
        """What the pod's detector does first: claim the batch of its Job's assignment."""
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        await self.queue.claim(
            env["FACESCAN_LIBRARY"],
            env["FACESCAN_LEASE_OWNER"],
            step=int(env["FACESCAN_STEP"]),
            size_class=int(env["FACESCAN_SIZE_CLASS"]),
            limit=int(env["FACESCAN_BATCH_SIZE"]),
            lease_seconds=int(env["FACESCAN_LEASE_SECONDS"]),
        )

    async def _bound_pod(self, job: str) -> Obj | None:
        for _ in range(50):
            pods = self.kube.objects("v1/pods", NS, labels=f"job-name={job}")
            if pods and pods[0]["spec"].get("nodeName"):
                return dict(pods[0])
            await asyncio.sleep(0.02)
        return None

    def _status(self, pod: Obj, reason: str, code: int | None) -> None:
        """Running (code None), or terminated with the exit code and reason."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        container = pod["spec"]["containers"][0]
        if code is None:
            phase, state = "Running", {"running": {"startedAt": stamp}}
        else:
            phase = "Succeeded" if code == 0 else "Failed"
            state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": stamp}}
        status = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "sha256:bench",
                    "ready": code is None,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        name = pod["metadata"]["name"]
        self.kube.request(
            "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", {"status": status}
        )


class TimedQueue(Queue):
    """The real queue client, adding up the time its calls take."""

    spent_s = 0.0

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        started = time.perf_counter()
        try:
            return await super()._fetch(name, *args)
        finally:
            TimedQueue.spent_s += time.perf_counter() - started


async def _bench(args: argparse.Namespace, dsn: str, workdir: Path) -> int:
    settings = DatabaseSettings(dsn=dsn)
    await migrate(settings)
    queue = await TimedQueue.connect(settings, max_size=4)
    spec = _spec(args.parallelism, args.batch_size, args.ttl)
    await queue.ensure_library(LIBRARY, policy_of(spec))
    if (await queue.status(LIBRARY)).images < args.images:
        t = time.perf_counter()
        added = await queue.register(LIBRARY, _images(args.images))
        print(f"registered {added:,} images in {time.perf_counter() - t:.1f} s")
        conn = await asyncpg.connect(dsn)
        await conn.execute("VACUUM ANALYZE facescan.images")
        await conn.close()
    cluster = controlplane.up(workdir / "cluster", agent=False)  # the bench is the kubelet
    try:
        return await _ticks(args, dsn, queue, spec, Kube(cluster, NS, workdir))
    finally:
        controlplane.down(cluster.dir)
        await queue.close()


async def _ticks(
    args: argparse.Namespace, dsn: str, queue: Queue, spec: FaceScanSpec, cluster: Kube
) -> int:
    from facescan_operator.k8s.kube import ClusterApi

    for module in (kubernetes.config, kubernetes.config.kube_config):
        module.KUBE_CONFIG_DEFAULT_LOCATION = str(cluster.kubeconfig)  # type: ignore[attr-defined]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    cluster.request("POST", "/api/v1/namespaces", namespace)

    class TimedApi(ClusterApi):
        """The operator's real API client, adding up the time of each kind of call."""

        spent: ClassVar[dict[str, float]] = {}

        async def _timed(self, name: str, call: Any, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args)
            finally:
                took = time.perf_counter() - started
                TimedApi.spent[name] = TimedApi.spent.get(name, 0.0) + took

        async def list_jobs(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
            return await self._timed("list_jobs", super().list_jobs, namespace, labels)  # type: ignore[no-any-return]

        async def list_pods(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
            return await self._timed("list_pods", super().list_pods, namespace, labels)  # type: ignore[no-any-return]

        async def create_job(self, namespace: str, body: Obj) -> None:
            await self._timed("create_job", super().create_job, namespace, body)

        async def delete_job(self, namespace: str, name: str) -> None:
            await self._timed("delete_job", super().delete_job, namespace, name)

    kube = TimedApi()
    nodes = Nodes(cluster, queue)
    nodes.register()
    breaker = CircuitBreaker()
    calibration = CalibrationTable.load(None)
    scan = ScanRef(NS, NAME, UID)
    status: Obj = {}
    times: dict[str, list[float]] = {"churn": [], "steady": []}
    db_times: dict[str, list[float]] = {"churn": [], "steady": []}
    api_times: list[dict[str, float]] = []
    most_jobs = 0
    oom_seen_tick = rescheduled_tick = None
    finished_within_ttl = 0
    written: LibraryPolicy | None = None
    for tick in range(args.ticks):
        # first half: every Job ends before the next tick (the most API calls a tick makes:
        # parallelism Jobs deleted and as many created); second half: Jobs at work
        # (the tick between them, which still settles the last churned Jobs, counts in neither)
        half = args.ticks // 2
        phase = "churn" if tick < half else "between" if tick == half else "steady"
        TimedQueue.spent_s = 0.0
        TimedApi.spent = {}
        started = time.perf_counter()
        outcome: Outcome = await reconcile(
            scan, spec, queue, kube, breaker, status, calibration=calibration, written=written
        )
        written = outcome.written
        elapsed = time.perf_counter() - started
        if phase != "between":
            times[phase].append(elapsed)
            db_times[phase].append(TimedQueue.spent_s)
        if phase == "churn":
            api_times.append(dict(TimedApi.spent))
        status = {**status, **outcome.status}
        if outcome.oom_killed:
            oom_seen_tick = tick
        jobs = cluster.objects("batch/v1/jobs", NS)
        if nodes.oom_image is not None and rescheduled_tick is None:
            # rescheduled: at step 1, with a step-1 Job to claim it
            row = await _image(dsn, nodes.oom_image)
            steps = {j["metadata"]["labels"].get("facescan.io/step") for j in jobs}
            if row["step"] == 1 and "1" in steps:
                rescheduled_tick = tick
        # ended: its pod ended (the operator reads that first; the Job controller's
        # conditions follow a moment later)
        ended = sum(1 for j in jobs if j["metadata"]["name"] in nodes.ended)
        most_jobs = max(most_jobs, len(jobs))
        finished_within_ttl = max(finished_within_ttl, ended)
        await nodes.run_jobs(kill_one=tick == 3, finish=phase == "churn")
        await asyncio.sleep(args.interval)
    counts = await queue.status(LIBRARY)

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000

    print(
        f"reconcile of {counts.images:,} images, parallelism {args.parallelism}, "
        f"batch {args.batch_size}, {args.ticks} ticks:"
    )
    for phase, what in (
        ("steady", "Jobs at work (the usual tick)"),
        ("churn", f"all {args.parallelism} Jobs ended and replaced (the busiest tick)"),
    ):
        print(
            f"  {what}: median {ms(times[phase], 0.5):.1f} ms, p95 {ms(times[phase], 0.95):.1f}"
            f" ms; database part median {ms(db_times[phase], 0.5):.1f} ms"
        )
    steady_p95 = ms(times["steady"], 0.95)
    print(f"  target <= {TARGET_MS:.0f} ms per usual tick: p95 {steady_p95:.1f} ms")
    calls = sorted({name for tick in api_times for name in tick})
    print(
        "  busiest tick's API calls, median ms summed over concurrent calls: "
        + ", ".join(
            f"{name} {statistics.median(t.get(name, 0.0) for t in api_times) * 1000:.1f}"
            for name in calls
        )
    )
    print(f"images done during the run: {counts.done:,}; leased now {counts.leased}")
    bound = args.parallelism + finished_within_ttl
    print(
        f"Jobs at once: at most {most_jobs} (parallelism {args.parallelism}, finished "
        f"within TTL {args.ttl} s: at most {finished_within_ttl}; bound {bound}); "
        f"{len(nodes.handled)} Jobs created in all"
    )
    if oom_seen_tick is None or rescheduled_tick is None:
        print("OOMKilled culprit: NOT rescheduled")
        late = None
    else:
        late = rescheduled_tick - oom_seen_tick
        print(
            f"OOMKilled culprit: kill seen in tick {oom_seen_tick}, in a new Job at step 1 "
            f"in tick {rescheduled_tick} ({late} ticks later; target 0)"
        )
    ok = steady_p95 <= TARGET_MS and most_jobs <= bound and late == 0
    print("RESULT:", "all targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


async def _image(dsn: str, image_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT lease_owner, step FROM facescan.images WHERE id = $1", image_id
        )
        assert row is not None
        return row
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--ttl", type=int, default=0, help="ttlSecondsAfterFinished")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between ticks")
    parser.add_argument("--dsn", help="use this PostgreSQL instead of an embedded one")
    args = parser.parse_args()
    os.environ.setdefault("FACESCAN_METRICS_PORT", "0")
    with tempfile.TemporaryDirectory(prefix="facescan-reconcile-") as tmp:
        if args.dsn:
            return asyncio.run(_bench(args, args.dsn, Path(tmp)))
        from facescan_operator.embedded_db import EmbeddedDatabase

        db = EmbeddedDatabase(Path(tmp) / "pg", database="bench")
        try:
            return asyncio.run(_bench(args, db.dsn, Path(tmp)))
        finally:
            db.stop()


if __name__ == "__main__":
    raise SystemExit(main())
