"""The command line of ``scripts/dev-cluster``.

dev-cluster build               build the Kubernetes binaries (cached; seconds when built)
dev-cluster up --dir DIR        start a cluster; prints `export KUBECONFIG=...`
dev-cluster down --dir DIR      stop every process it started, by PID
dev-cluster status --dir DIR    which processes run, the nodes, memory
dev-cluster agent --dir DIR     the node agent itself (started by `up`)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from facescan_devcluster import build, controlplane, database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dev-cluster",
        description="A real Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, "
        "kube-scheduler, kube-controller-manager; RBAC and admission on) with a node agent "
        "that runs pods as local processes. No container engine needed.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the Kubernetes binaries (cached outside the clone)")
    for name, text in (
        ("up", "start a cluster in DIR and wait until it is ready"),
        ("down", "stop the cluster in DIR"),
        ("status", "show the cluster in DIR"),
        ("agent", "run the node agent of the cluster in DIR (started by up)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, required=True, help="the cluster's folder")
        if name == "up":
            sub.add_argument(
                "--postgres",
                action="store_true",
                help="also start a PostgreSQL (with pgvector) for the pods on 127.0.0.1, with a "
                "random password; its URL is written to DIR/database.dsn (mode 0600)",
            )
            sub.add_argument(
                "--image",
                action="append",
                dest="images",
                metavar="PATTERN",
                help="an image the nodes have (glob; repeatable; default: *facescan*); a "
                "pod of another image gets ErrImagePull",
            )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            paths = build.ensure_built()
            print(f"Kubernetes {build.VERSION}: {paths['kube-apiserver'].parent}")
        elif args.command == "up":
            _up(args.dir, tuple(args.images or controlplane.DEFAULT_IMAGES), args.postgres)
        elif args.command == "down":
            stopped = controlplane.down(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            _status(args.dir)
        else:
            from facescan_devcluster import nodeagent

            nodeagent.main(args.dir)
    except (controlplane.ClusterError, build.BuildError, database.DatabaseError) as exc:
        print(f"dev-cluster: {exc}", file=sys.stderr)
        sys.exit(1)


def _up(directory: Path, images: tuple[str, ...], postgres: bool) -> None:
    build.ensure_built()
    started = time.monotonic()
    cluster = controlplane.up(directory, images=images, postgres=postgres)
    took = time.monotonic() - started
    rss = controlplane.rss_bytes(cluster) / 2**20
    print(
        f"Kubernetes {cluster.version} ready in {took:.1f} s at {cluster.server} "
        f"(nodes {', '.join(cluster.nodes)}; control plane {rss:.0f} MiB RSS)",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    if postgres:  # the password stays in the file
        print(f'export FACESCAN_DSN="$(cat {cluster.dir / "database.dsn"})"')


def _status(directory: Path) -> None:
    cluster = controlplane.Cluster.load(directory.resolve())
    for name, pid in cluster.pids.items():
        state = "running" if controlplane.alive(cluster, name) else "stopped"
        print(f"{name:<24} pid {pid:<8} {state}")
    print(f"server {cluster.server}; {controlplane.rss_bytes(cluster) / 2**20:.0f} MiB RSS")
    try:
        nodes = cluster.get("/api/v1/nodes")["items"]
    except OSError as exc:
        print(f"the API server does not answer: {exc}")
        return
    for node in nodes:
        ready = next(
            (c["status"] for c in node["status"].get("conditions") or () if c["type"] == "Ready"),
            "Unknown",
        )
        print(f"node {node['metadata']['name']:<20} Ready={ready}")
