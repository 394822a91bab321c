"""Fixtures of the end-to-end harness: an emulated cluster and an in-test kubelet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes.config
import pytest

from .cluster import Cluster, Kubelet


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A fresh emulated cluster per test. KUBECONFIG points at it for the whole test, so
    kopf's default login, kubernetes.config.load_kube_config() and subprocesses find it."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    # kubernetes.config reads KUBECONFIG once, at import: load_kube_config() (kopf's default
    # login, the operator's ClusterApi) would otherwise look in ~/.kube/config
    for module in (kubernetes.config, kubernetes.config.kube_config):
        monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", os.environ["KUBECONFIG"])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    running = Cluster(tmp_path).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kubelet(cluster: Cluster) -> Iterator[Kubelet]:
    """Runs the cluster's Jobs as local processes; at teardown kills what is left, removes
    the cgroups, and fails the test if the kubelet itself failed."""
    running = Kubelet(cluster).start()
    try:
        yield running
    finally:
        running.stop()
