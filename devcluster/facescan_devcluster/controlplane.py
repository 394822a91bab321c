"""Starts and stops a dev cluster's processes: etcd, kube-apiserver, kube-scheduler,
kube-controller-manager, the node agent and (``--postgres``) a PostgreSQL, on 127.0.0.1,
with their state in one folder.

Called by ``scripts/dev-cluster up|down`` (cli.py), the e2e tests' fixtures and the
reconcile benchmark. The folder holds the PKI and tokens, a kubeconfig per user
(``admin.kubeconfig``: system:masters), each process's log in logs/, the API server's
audit log of what it was asked to create, the pods' folders, and ``cluster.json`` (ports,
nodes, pids). ``down`` stops by PID only processes whose command line is still the one it
started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facescan_devcluster import build, database, pki

ADMIN = "admin"
NODE_NAMES = ("cpu-node", "gpu-node")
SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_IMAGES = ("*facescan*",)
"""Images the nodes "have": a pod of any other image gets ErrImagePull/ImagePullBackOff."""
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # What was asked to be created (a Job, a Pod): the tests read it even after deletion.
  - level: Request
    verbs: [create]
    resources:
      - group: batch
        resources: [jobs]
      - group: ""
        resources: [pods, pods/eviction]
  - level: None
"""


_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this process started (reaped by down(); never collected while running)."""


class ClusterError(RuntimeError):
    """The dev cluster could not start (the message names the process and its log)."""


@dataclass
class Cluster:
    """A running (or stopped) dev cluster, as written to DIR/cluster.json."""

    dir: Path
    version: str
    api_port: int
    etcd_port: int
    nodes: tuple[str, ...] = NODE_NAMES
    pids: dict[str, int] = field(default_factory=dict)
    argv0: dict[str, str] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    """Each process's start time (clock ticks after boot, /proc/PID/stat): with argv0, what
    tells it from a later process that got the same PID (they wrap at 32768 here)."""
    cgroup_prefix: str = ""
    images: tuple[str, ...] = DEFAULT_IMAGES

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def ca(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def token(self, user: str = ADMIN) -> str:
        tokens: dict[str, str] = json.loads((self.dir / "pki" / "tokens.json").read_text())
        return tokens[user]

    def save(self) -> None:
        state = asdict(self) | {"dir": str(self.dir), "nodes": list(self.nodes)}
        state["images"] = list(self.images)
        (self.dir / "cluster.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        state = json.loads((directory / "cluster.json").read_text())
        state["dir"] = Path(state["dir"])
        state["nodes"] = tuple(state["nodes"])
        state["images"] = tuple(state["images"])
        return cls(**state)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def get(self, path: str, user: str = ADMIN, timeout: float = 5) -> Any:
        """GET an API path as ``user``; the parsed JSON (or text for /readyz)."""
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token(user)}"}
        )
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=timeout) as r:
            body = r.read().decode()
        return json.loads(body) if body.startswith("{") else body


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    cluster: Cluster,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    **popen: Any,
) -> None:
    """Start one process in a session of its own, its output in DIR/logs/NAME.log."""
    logs = cluster.dir / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed by the caller's Ctrl-C; `down` stops it
            cwd=cluster.dir,
            env=env,
            **popen,
        )
    _children[proc.pid] = proc
    cluster.pids[name] = proc.pid
    cluster.argv0[name] = argv[0]
    with contextlib.suppress(OSError):
        cluster.started[name] = int(_stat(proc.pid)[19])
    cluster.save()


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first; the start time is
    the 20th)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(cluster: Cluster, name: str) -> bool:
    """Whether the process ``name`` started is still running: the same command line and
    start time at its PID, not a zombie."""
    pid = cluster.pids.get(name)
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = _stat(pid)
    except OSError:
        return False
    started = cluster.started.get(name)
    same = cmdline == cluster.argv0.get(name) and started in (None, int(stat[19]))
    return stat[0] != "Z" and same


def _how_it_ended(pid: int) -> str:
    """' (exit status N)' or ' (killed by SIGNAME)' for a child of this process that
    ended; '' when it is not ours to know."""
    proc = _children.get(pid)
    code = proc.poll() if proc is not None else None
    if code is None:
        return ""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(-code).name})"
    return f" (exit status {code})"


def _wait(what: str, check: Any, timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            if check():
                return
        for process in cluster.pids:
            if not alive(cluster, process):
                log = cluster.dir / "logs" / f"{process}.log"
                tail = "".join(log.read_text(errors="replace").splitlines(True)[-5:])
                ended = _how_it_ended(cluster.pids[process])
                raise ClusterError(f"{process} exited{ended}; see {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{what} not ready after {timeout:.0f} s; see {cluster.dir / 'logs'}/"
            )
        time.sleep(0.1)


def _users(nodes: tuple[str, ...]) -> list[pki.User]:
    names: dict[str, tuple[str, ...]] = {
        ADMIN: ("system:masters",),
        "system:kube-scheduler": (),
        "system:kube-controller-manager": (),
    }
    names |= {f"system:node:{node}": ("system:nodes",) for node in nodes}
    return pki.make_users(names)


def up(
    directory: Path,
    *,
    timeout: float = 60,
    images: tuple[str, ...] = DEFAULT_IMAGES,
    agent_env: dict[str, str] | None = None,
    agent: bool = True,
    postgres: bool = False,
) -> Cluster:
    """Start a dev cluster in ``directory``; return once the API is ready and every Node
    is Ready. Builds the binaries first if they are not built yet. With ``postgres``, also
    a PostgreSQL for its pods on 127.0.0.1 (database.py; its URL in DIR/database.dsn)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "cluster.json").exists():
        old = Cluster.load(directory)
        if any(alive(old, name) for name in old.pids):
            raise ClusterError(f"a dev cluster already runs in {directory} (down it first)")
    binaries = build.ensure_built()
    cluster = Cluster(directory, build.VERSION, free_port(), free_port())
    cluster.cgroup_prefix = f"facescan-devcluster-{cluster.api_port}"
    cluster.images = images
    pki_dir = directory / "pki"
    pki.make_pki(pki_dir)
    users = _users(cluster.nodes)
    pki.write_token_file(pki_dir / "tokens.csv", users)
    pki.write_private(pki_dir / "tokens.json", json.dumps({u.name: u.token for u in users}))
    for user in users:
        name = "admin" if user.name == ADMIN else user.name.split(":")[-1]
        pki.write_private(
            directory / f"{name}.kubeconfig", pki.kubeconfig(cluster.server, cluster.ca, user)
        )
    (directory / "audit-policy.yaml").write_text(AUDIT_POLICY)
    cluster.save()
    try:
        _start_etcd(cluster)
        if postgres:
            port = free_port()
            argv, run_as, dsn = database.prepare(directory, port)
            _start(cluster, "postgres", argv, **run_as)
        _start_apiserver(cluster, binaries)
        _wait("kube-apiserver", lambda: cluster.get("/readyz") == "ok", timeout, cluster)
        if postgres:
            database.wait_ready(dsn, port, timeout, lambda: alive(cluster, "postgres"))
        for component in ("kube-scheduler", "kube-controller-manager"):
            kubeconfig = directory / f"{component}.kubeconfig"
            argv = [str(binaries[component]), f"--kubeconfig={kubeconfig}", "--leader-elect=false"]
            argv += [
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
            ]
            argv += ["--bind-address=127.0.0.1", f"--secure-port={free_port()}"]
            if component == "kube-controller-manager":
                argv += [
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                    f"--root-ca-file={cluster.ca}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,-csrsigning,-csrapproving,-csrcleaner,-bootstrapsigner,-tokencleaner",
                    "--concurrent-job-syncs=5",
                ]
            _start(cluster, component, argv)
        if not agent:
            return cluster
        _start(
            cluster,
            "node-agent",
            [sys.executable, "-m", "facescan_devcluster", "agent", "--dir", str(directory)],
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (agent_env or {}),
        )
        _wait("the nodes", lambda: _nodes_ready(cluster), timeout, cluster)
    except BaseException:
        down(directory)
        raise
    if (directory / "database.dsn").exists() and not postgres:
        (directory / "database.dsn").unlink()  # an earlier up's: nothing serves it now
    return cluster


def _start_etcd(cluster: Cluster) -> None:
    data = cluster.dir / "etcd"
    url = f"http://127.0.0.1:{cluster.etcd_port}"
    argv = [
        str(build.etcd_binary()),
        f"--data-dir={data}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
        "--unsafe-no-fsync",
        "--quota-backend-bytes=2147483648",
    ]
    _start(cluster, "etcd", argv)


def _start_apiserver(cluster: Cluster, binaries: dict[str, Path]) -> None:
    pki_dir = cluster.dir / "pki"
    argv = [
        str(binaries["kube-apiserver"]),
        f"--etcd-servers=http://127.0.0.1:{cluster.etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={cluster.api_port}",
        f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
        f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
        f"--client-ca-file={cluster.ca}",
        f"--token-auth-file={pki_dir / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",  # besides the default ones
        f"--service-account-key-file={pki_dir / 'sa.pub'}",
        f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--audit-policy-file={cluster.dir / 'audit-policy.yaml'}",
        f"--audit-log-path={cluster.audit_log}",
        "--audit-log-format=json",
        "--profiling=false",
        "--endpoint-reconciler-type=none",
    ]
    _start(cluster, "kube-apiserver", argv)


def _nodes_ready(cluster: Cluster) -> bool:
    nodes = cluster.get("/api/v1/nodes")["items"]
    ready = {
        node["metadata"]["name"]
        for node in nodes
        for c in (node.get("status") or {}).get("conditions") or ()
        if c["type"] == "Ready" and c["status"] == "True"
    }
    return ready >= set(cluster.nodes)


def down(directory: Path, *, grace: float = 10) -> list[str]:
    """Stop every process the cluster in ``directory`` started (Kueue and the node agent first, etcd
    last), by PID; returns the names of those that were running."""
    directory = directory.resolve()
    if not (directory / "cluster.json").exists():
        return []
    cluster = Cluster.load(directory)
    order = ["kueue", "node-agent", "kube-controller-manager", "kube-scheduler", "kube-apiserver"]
    order += ["postgres", "etcd"]
    stopped = []
    for name in order:
        if not alive(cluster, name):
            continue
        stopped.append(name)
        pid = cluster.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(cluster, name) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if alive(cluster, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
    return stopped


def _reap(pid: int) -> None:
    """Collect a child that exited (when the caller of up() is its parent)."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def rss_bytes(cluster: Cluster) -> int:
    """Resident memory of the cluster's processes, together."""
    total = 0
    for name, pid in cluster.pids.items():
        if not alive(cluster, name):
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
