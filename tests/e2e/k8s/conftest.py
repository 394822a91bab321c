"""Fixtures of the end-to-end harness: a real control plane per test process (started on
first use, stopped at the end) and a fresh namespace per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes.config
import pytest

from facescan_devcluster import controlplane
from facescan_devcluster.controlplane import Cluster

from .cluster import ApiError, Kube, rest_path

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
    """Delete the namespace and everything in it; FaceScans left with the operator's
    finalizer (the operator is stopped by now) are let go first."""
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
