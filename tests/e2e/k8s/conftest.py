"""Fixtures of the end-to-end harness: a real control plane per test process (started on
first use, stopped at the end) and a fresh namespace per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import kubernetes.config
import pytest

from facescan_devcluster import controlplane
from facescan_devcluster.controlplane import Cluster
from facescan_devcluster.kueue import Kueue
from facescan_operator import settlement
from tests.e2e.local.support import copy_samples

from .cluster import CRD_FILE, ApiError, Kube, rest_path
from .dbproxy import DatabaseProxy
from .operator_support import (
    Operator,
    apply,
    created_jobs,
    install,
    library_claim,
    secret,
    validate_jobs,
)

IMAGES = ("*facescan*", "e2e*")
"""Images the nodes have; any other one is ErrImagePull."""
_namespaces = itertools.count()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """scripts/dev-cluster's cluster, as `dev-cluster up` starts it."""
    directory = tmp_path_factory.mktemp("dev-cluster")
    cluster = controlplane.up(directory, images=IMAGES)
    try:
        yield cluster
    finally:
        controlplane.down(directory)


@pytest.fixture(scope="module")
def kueue(control_plane: Cluster) -> Iterator[Kueue]:
    """Kueue's manager beside the control plane, as `dev-cluster up --kueue` runs it, for
    one test module: at its end the webhooks are unregistered and the manager stopped, so
    that no other module's Job is Kueue's."""
    manager = Kueue(control_plane)
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def cluster(
    control_plane: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Kube]:
    """The test's own namespace on the control plane. KUBECONFIG points at the admin
    kubeconfig for the whole test, so kopf's default login,
    kubernetes.config.load_kube_config() and subprocesses find it."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    # kubernetes.config reads KUBECONFIG once, at import: load_kube_config() (kopf's default
    # login, the operator's ClusterApi) would otherwise look in ~/.kube/config
    for module in (kubernetes.config, kubernetes.config.kube_config):
        monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", os.environ["KUBECONFIG"])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    name = f"t{next(_namespaces)}-{os.getpid()}"
    kube = Kube(control_plane, name, tmp_path)
    kube.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    try:
        yield kube
    finally:
        _delete_namespace(kube)


def _delete_namespace(kube: Kube) -> None:
    """Delete the namespace and everything in it, and the test's PersistentVolumes;
    FaceScans left with the operator's finalizer (the operator is stopped by now) are let
    go first."""
    try:
        scans = kube.objects("facescan.io/v1alpha1/facescans")
    except ApiError:
        scans = []  # the CRD was never applied
    for scan in scans:
        if scan["metadata"].get("finalizers"):
            path = rest_path(
                "facescan.io/v1alpha1/facescans", kube.namespace, scan["metadata"]["name"]
            )
            kube.request("PATCH", path, {"metadata": {"finalizers": None}})
    kube.request("DELETE", f"/api/v1/namespaces/{kube.namespace}")
    for volume in kube.objects("v1/persistentvolumes", None):  # cluster-wide, kept (Retain)
        if (volume["spec"].get("claimRef") or {}).get("namespace") == kube.namespace:
            kube.request("DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}")


# --- the operator's tests ---


@pytest.fixture(scope="session")
def db_proxy(pg_server: object) -> Iterator[DatabaseProxy]:
    """The test PostgreSQL over TCP on 127.0.0.1, as pods reach a database."""
    proxy = DatabaseProxy.for_dsn(pg_server.get_uri())  # type: ignore[attr-defined]
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def crds(control_plane: Cluster) -> None:
    """`kubectl apply -f crds/`, once per cluster (CRDs are cluster-wide)."""
    kube = Kube(control_plane, "default", Path(control_plane.dir))
    kube.kubectl("apply", "-f", str(CRD_FILE.parent))
    kube.kubectl(
        "wait", "--for=condition=Established", "crd/facescans.facescan.io", "--timeout=30s"
    )


@pytest.fixture
def library(cluster: Kube) -> str:
    """The library name of FaceScan <namespace>/photos."""
    return f"{cluster.namespace}/photos"


@pytest.fixture
async def operator(
    cluster: Kube,
    crds: None,
    db_proxy: DatabaseProxy,
    dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Operator]:
    """The chart installed, the database Secret applied, then the operator with the
    chart's ServiceAccount (the test starts it). At the end: every Job it created,
    deleted since or not, is a valid Kubernetes 1.30 Job."""
    installed = install(cluster, tmp_path)
    await apply(cluster, secret(db_proxy.tcp_dsn(dsn)))
    running = Operator(monkeypatch, cluster.namespace, installed.kubeconfig, env=installed.env)
    try:
        yield running
    finally:
        await running.stop()
    validate_jobs(created_jobs(cluster))


@pytest.fixture
def photos(cluster: Kube, tmp_path: Path) -> Path:
    root = tmp_path / "library"
    copy_samples(root)
    library_claim(cluster, root)
    return root


@pytest.fixture
def quick_vanish(monkeypatch: pytest.MonkeyPatch) -> timedelta:
    """Leases of vanished Jobs are released after 3 s rather than 60 s."""
    grace = timedelta(seconds=3)
    monkeypatch.setattr(settlement, "VANISHED_GRACE", grace)
    return grace
