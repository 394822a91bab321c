"""The dev cluster's processes are known by PID, command line and start time: a later
process that got a recorded PID is never taken for (or stopped as) the one started, and a
process that dies while the cluster starts is reported with how it ended."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from facescan_devcluster import controlplane
from facescan_devcluster.controlplane import Cluster, ClusterError


def a_cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path, "v0", controlplane.free_port(), controlplane.free_port())


def test_a_process_with_the_recorded_pid_but_a_later_start_is_not_the_one_started(
    tmp_path: Path,
) -> None:
    cluster = a_cluster(tmp_path)
    controlplane._start(cluster, "etcd", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert controlplane.alive(cluster, "etcd")
        reloaded = Cluster.load(tmp_path)
        assert controlplane.alive(reloaded, "etcd")

        reloaded.started["etcd"] += 1  # what a PID reused by the same binary looks like
        assert not controlplane.alive(reloaded, "etcd")
        assert controlplane.down(tmp_path) == ["etcd"]  # the true one is still stopped
        assert not controlplane.alive(cluster, "etcd")
    finally:
        controlplane.down(tmp_path, grace=1)


def test_a_process_killed_while_the_cluster_starts_is_reported_with_its_signal(
    tmp_path: Path,
) -> None:
    cluster = a_cluster(tmp_path)
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    controlplane._start(cluster, "victim", [sys.executable, "-c", killed])

    with pytest.raises(ClusterError, match=r"victim exited \(killed by SIGKILL\); see "):
        controlplane._wait("victim", lambda: False, 30, cluster)


def test_a_process_that_fails_is_reported_with_its_exit_status(tmp_path: Path) -> None:
    cluster = a_cluster(tmp_path)
    failing = "import sys; print('no such flag'); sys.exit(3)"
    controlplane._start(cluster, "failing", [sys.executable, "-c", failing])

    with pytest.raises(ClusterError, match=r"failing exited \(exit status 3\).*\nno such flag"):
        controlplane._wait("failing", lambda: False, 30, cluster)
