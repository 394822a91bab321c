"""Kueue's manager beside a dev cluster: ``scripts/dev-cluster up --kueue`` and the e2e
tests' ``kueue`` fixture.

Kueue (build.KUEUE_VERSION, built by build.py from ``devcluster/kueue``) runs as a local
process on 127.0.0.1, installed from its own release's config/ in the Go module cache, as
its kustomization would install it in kueue-system: the CRDs (conversion webhooks
included), the manager's ServiceAccount bound to its ClusterRole (and metrics-auth and
secrets roles); Kueue calls the API with a token of that ServiceAccount. Its webhooks
(those of batch/v1 Jobs and Kueue's own kinds, the only integration enabled) are served on
127.0.0.1 with a certificate signed by the cluster's CA (pki.py), and registered with
``url: https://127.0.0.1:PORT/PATH`` in place of the Service. Leader election and
internal cert management are off; metrics and health listen on 127.0.0.1; the visibility
API server (an aggregated API needing a Service) is off. Kueue reads its metrics
certificate from a fixed /etc/kueue/metrics/certs: it runs in a private mount namespace
where /etc is an overlay holding them (nothing is written to the host's /etc). Its log is
DIR/logs/kueue.log; its files are in DIR/kueue.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from facescan_devcluster import build, controlplane, pki
from facescan_devcluster.controlplane import Cluster, ClusterError

Obj = dict[str, Any]
NAMESPACE = "kueue-system"
PREFIX = "kueue-"  # the release's kustomize namePrefix
SERVICE_ACCOUNT = f"{PREFIX}controller-manager"
RBAC = "service_account role role_binding metrics_auth_role metrics_auth_role_binding"
RBAC += " manager_secrets_role manager_secrets_role_binding"  # config/components/rbac/*.yaml
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}
"""The webhooks registered: batch/v1 Jobs' (the one integration) and Kueue's own kinds'."""
WEBHOOK_CONFIGURATIONS = (
    f"mutatingwebhookconfiguration/{PREFIX}mutating-webhook-configuration",
    f"validatingwebhookconfiguration/{PREFIX}validating-webhook-configuration",
)
API = "kueue.x-k8s.io/v1beta2"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
"""gpu-node's taint (nodeagent.py): the gpu flavor's too, so that only Jobs whose pods
tolerate it (a FaceScan's GPU pool) are admitted to it, never CPU Jobs spilling over."""


class Kueue:
    """Kueue's manager for the cluster in ``cluster.dir``: start(), then stop()."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.dir = cluster.dir / "kueue"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        argv = [str(build.binaries()["kubectl"]), f"--kubeconfig={self.cluster.kubeconfig}"]
        proc = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True)
        if proc.returncode:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, *objects: Obj) -> None:
        """Server-side apply, as the dev cluster (the CRDs are too large for client-side)."""
        text = yaml.safe_dump_all(objects, sort_keys=False)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=text)

    def start(self, timeout: float = 90) -> None:
        """Install Kueue's CRDs and RBAC, start its manager, and register its webhooks
        once it serves them (before that, Jobs are created without Kueue's webhooks)."""
        binary = build.ensure_kueue_built()
        config = build.kueue_source() / "config" / "components"
        self.dir.mkdir(exist_ok=True)
        ca_bundle = base64.b64encode(self.cluster.ca.read_bytes()).decode()
        port = controlplane.free_port()
        url = f"https://127.0.0.1:{port}"
        crds = self._crds(config, url, ca_bundle)
        self.apply(*crds)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        self.apply(*self._rbac(config))
        names = [f"crd/{crd['metadata']['name']}" for crd in crds]
        self.kubectl("wait", "--for=condition=Established", "--timeout=30s", *names)
        certs = self.dir / "certs"
        self._serving_cert(certs)
        self._kubeconfig()
        health = controlplane.free_port()
        settings = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": f"127.0.0.1:{controlplane.free_port()}"},
            "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
            "featureGates": {"VisibilityOnDemand": False},
        }
        (self.dir / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        self._start(binary, certs)
        try:
            ready = f"http://127.0.0.1:{health}/readyz"
            controlplane._wait("kueue", lambda: _get(ready) == 200, timeout, self.cluster)
            self.apply(*self._webhooks(config, url, ca_bundle))
        except BaseException:
            self.stop()
            raise

    def _start(self, binary: Path, certs: Path) -> None:
        """The manager in a private mount namespace whose /etc is an overlay holding
        /etc/kueue/metrics/certs (Kueue's fixed path without internal cert management)."""
        upper, work = self.dir / "etc", self.dir / "etc.work"
        shutil.rmtree(upper, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(certs, upper / "kueue" / "metrics" / "certs")
        work.mkdir()
        argv = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            argv[1:1] = ["--user", "--map-root-user"]
        script = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
        argv += ["sh", "-c", f'{script} && shift 2 && exec "$@"', "kueue", str(upper), str(work)]
        argv += [str(binary), f"--config={self.dir / 'config.yaml'}", "--zap-log-level=2"]
        kubeconfig = self.dir / "kueue.kubeconfig"
        controlplane._start(
            self.cluster, "kueue", argv, env=os.environ | {"KUBECONFIG": str(kubeconfig)}
        )
        self.cluster.argv0["kueue"] = str(binary)  # what it is once unshare and sh exec'd
        self.cluster.save()
        deadline = time.monotonic() + 10
        while not controlplane.alive(self.cluster, "kueue") and time.monotonic() < deadline:
            time.sleep(0.02)  # still unshare or sh: alive() once it is kueue, or it exited

    def stop(self, grace: float = 10) -> bool:
        """Unregister the webhooks (Jobs are then created without Kueue) and stop the
        manager, by PID; whether it was running."""
        with contextlib.suppress(ClusterError):  # the API server is gone already: fine
            self.kubectl(
                "delete", "--ignore-not-found", "--request-timeout=5s", *WEBHOOK_CONFIGURATIONS
            )
        running = controlplane.alive(self.cluster, "kueue")
        if running:
            pid = self.cluster.pids["kueue"]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while controlplane.alive(self.cluster, "kueue") and time.monotonic() < deadline:
                controlplane._reap(pid)
                time.sleep(0.05)
            if controlplane.alive(self.cluster, "kueue"):
                os.kill(pid, signal.SIGKILL)
            controlplane._reap(pid)
        self.cluster.pids.pop("kueue", None)
        self.cluster.argv0.pop("kueue", None)
        self.cluster.started.pop("kueue", None)
        self.cluster.save()
        return running

    @staticmethod
    def _crds(config: Path, url: str, ca_bundle: str) -> list[Obj]:
        """The CRDs, with the conversion webhooks the release patches in, at ``url``."""
        kustomization = yaml.safe_load((config / "crd" / "kustomization.yaml").read_text())
        converted = set()
        for patch in kustomization.get("patches") or ():
            if "webhook_in_" in patch["path"]:
                converted.add(_load(config / "crd" / patch["path"])[0]["metadata"]["name"])
        crds = [_load(config / "crd" / path)[0] for path in kustomization["resources"]]
        for crd in crds:
            if crd["metadata"]["name"] in converted:
                client = {"url": f"{url}/convert", "caBundle": ca_bundle}
                webhook = {"clientConfig": client, "conversionReviewVersions": ["v1"]}
                crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": webhook}
        return crds

    @staticmethod
    def _rbac(config: Path) -> list[Obj]:
        """The manager's ServiceAccount and roles, named as the release names them."""
        objects = [o for name in RBAC.split() for o in _load(config / "rbac" / f"{name}.yaml")]
        for obj in objects:
            obj["metadata"]["name"] = PREFIX + obj["metadata"]["name"]
            if "namespace" in obj["metadata"]:
                obj["metadata"]["namespace"] = NAMESPACE
            if "roleRef" in obj:
                obj["roleRef"]["name"] = PREFIX + obj["roleRef"]["name"]
            for subject in obj.get("subjects") or ():
                subject |= {"name": PREFIX + subject["name"], "namespace": NAMESPACE}
        return objects

    @staticmethod
    def _webhooks(config: Path, url: str, ca_bundle: str) -> list[Obj]:
        """The release's webhook configurations, for Jobs and Kueue's kinds, at ``url``."""
        configurations = _load(config / "webhook" / "manifests.yaml")
        for configuration in configurations:
            configuration["metadata"]["name"] = PREFIX + configuration["metadata"]["name"]
            configuration["webhooks"] = [
                hook
                | {
                    "clientConfig": {
                        "url": url + hook["clientConfig"]["service"]["path"],
                        "caBundle": ca_bundle,
                    }
                }
                for hook in configuration["webhooks"]
                if {g for rule in hook["rules"] for g in rule["apiGroups"]} <= WEBHOOK_GROUPS
            ]
        return configurations

    def _serving_cert(self, certs: Path) -> None:
        """tls.crt and tls.key for 127.0.0.1, signed by the cluster's CA."""
        certs.mkdir(exist_ok=True, mode=0o700)
        ca = self.cluster.ca
        key, csr, crt, ext = (certs / n for n in ("tls.key", "tls.csr", "tls.crt", "tls.ext"))
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        openssl = ["openssl"]
        for args in (
            ["genrsa", "-out", str(key), "2048"],
            ["req", "-new", "-key", str(key), "-subj", "/CN=kueue-webhook", "-out", str(csr)],
            [
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca),
                "-CAkey",
                str(ca.with_suffix(".key")),
                "-CAcreateserial",
                "-days",
                pki.DAYS,
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ],
        ):
            subprocess.run(openssl + args, check=True, capture_output=True)
        key.chmod(0o600)

    def _kubeconfig(self) -> None:
        """A kubeconfig with a token of Kueue's ServiceAccount: its credentials."""
        token = self.kubectl(
            "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=8760h"
        ).strip()
        user = pki.User(f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}", (), token)
        text = pki.kubeconfig(self.cluster.server, self.cluster.ca, user, NAMESPACE)
        pki.write_private(self.dir / "kueue.kubeconfig", text)


def queues(
    name: str, *, cpu: str, memory: str, gpus: int = 1, selector: Obj | None = None
) -> list[Obj]:
    """ResourceFlavors ``cpu`` (cpu-node's label) and ``gpu`` (gpu-node's label and
    taint) and a ClusterQueue ``name`` with ``cpu`` and ``memory`` of each (and
    ``gpus`` GPUs of ``gpu``) for the namespaces ``selector`` picks (all by default)."""
    gpu = {"nodeLabels": {"facescan.io/pool": "gpu"}, "nodeTaints": [GPU_TAINT]}
    flavors: dict[str, Obj] = {"cpu": {"nodeLabels": {"facescan.io/pool": "cpu"}}, "gpu": gpu}
    objects = [_kueue("ResourceFlavor", f, spec) for f, spec in flavors.items()]
    quota = {
        "cpu": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "0"},
        "gpu": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
    }
    group = {
        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
        "flavors": [
            {"name": f, "resources": [{"name": r, "nominalQuota": q} for r, q in rs.items()]}
            for f, rs in quota.items()
        ],
    }
    spec = {"namespaceSelector": selector or {}, "resourceGroups": [group]}
    return [*objects, _kueue("ClusterQueue", name, spec)]


def local_queue(name: str, namespace: str, cluster_queue: str) -> Obj:
    """A LocalQueue (what a FaceScan's kueueQueueName names) feeding ``cluster_queue``."""
    return _kueue("LocalQueue", name, {"clusterQueue": cluster_queue}, namespace)


def _kueue(kind: str, name: str, spec: Obj, namespace: str | None = None) -> Obj:
    metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": API, "kind": kind, "metadata": metadata, "spec": spec}


def _load(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)
