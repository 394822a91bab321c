"""The command line of ``scripts/dev-cluster``.

dev-cluster build [--kueue]     build the Kubernetes binaries (cached; seconds when built)
dev-cluster up --dir DIR        start a cluster; prints `export KUBECONFIG=...`
                                (--kueue: and Kueue's manager beside it, kueue.py)
dev-cluster down --dir DIR      stop every process it started, by PID
dev-cluster status --dir DIR    which processes run, the nodes, memory
dev-cluster agent --dir DIR     the node agent itself (started by `up`)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from facescan_devcluster import build, controlplane, database, kueue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dev-cluster",
        description="A real Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, "
        "kube-scheduler, kube-controller-manager; RBAC and admission on) with a node agent "
        "that runs pods as local processes. No container engine needed.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    builder = commands.add_parser(
        "build", help="build the Kubernetes binaries (cached outside the clone)"
    )
    builder.add_argument("--kueue", action="store_true", help="and Kueue's manager")
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
            sub.add_argument(
                "--kueue",
                action="store_true",
                help=f"also run Kueue {build.KUEUE_VERSION} (built the first time), with "
                "ResourceFlavors cpu and gpu and a ClusterQueue facescan of the nodes' capacity "
                "for every namespace (a namespace's LocalQueue names it)",
            )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            paths = build.ensure_built()
            print(f"Kubernetes {build.VERSION}: {paths['kube-apiserver'].parent}")
            if args.kueue:
                print(f"Kueue {build.KUEUE_VERSION}: {build.ensure_kueue_built()}")
        elif args.command == "up":
            images = tuple(args.images or controlplane.DEFAULT_IMAGES)
            _up(args.dir, images, args.postgres, args.kueue)
        elif args.command == "down":
            stopped = _stop_kueue(args.dir) + controlplane.down(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            _status(args.dir)
        else:
            from facescan_devcluster import nodeagent

            nodeagent.main(args.dir)
    except (controlplane.ClusterError, build.BuildError, database.DatabaseError) as exc:
        print(f"dev-cluster: {exc}", file=sys.stderr)
        sys.exit(1)


def _up(directory: Path, images: tuple[str, ...], postgres: bool, with_kueue: bool) -> None:
    build.ensure_built()
    if with_kueue:
        build.ensure_kueue_built()
    started = time.monotonic()
    cluster = controlplane.up(directory, images=images, postgres=postgres)
    took = time.monotonic() - started
    if with_kueue:
        try:
            manager = kueue.Kueue(cluster)
            manager.start()
            manager.apply(*kueue.queues("facescan", cpu="8", memory="32Gi"))
        except BaseException:
            _stop_kueue(directory)
            controlplane.down(directory)
            raise
    rss = controlplane.rss_bytes(cluster) / 2**20
    print(
        f"Kubernetes {cluster.version} ready in {took:.1f} s at {cluster.server} "
        f"(nodes {', '.join(cluster.nodes)}; control plane {rss:.0f} MiB RSS)",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    if postgres:  # the password stays in the file
        print(f'export FACESCAN_DSN="$(cat {cluster.dir / "database.dsn"})"')
    if with_kueue:
        print(
            f"Kueue {build.KUEUE_VERSION} ready {time.monotonic() - started - took:.1f} s later "
            "(its memory counted above): it admits the Jobs of the LocalQueues "
            f"feeding ClusterQueue facescan (log: {cluster.dir / 'logs' / 'kueue.log'})",
            file=sys.stderr,
        )


def _stop_kueue(directory: Path) -> list[str]:
    """Kueue's manager stopped and its webhooks unregistered, if it runs."""
    directory = directory.resolve()
    if not (directory / "cluster.json").exists():
        return []
    cluster = controlplane.Cluster.load(directory)
    if "kueue" not in cluster.pids:
        return []
    return ["kueue"] if kueue.Kueue(cluster).stop() else []


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
