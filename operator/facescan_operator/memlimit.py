"""Memory limits for local detector subprocesses, enforced the way a kubelet would.

Used by the local runner. Picks the strongest mechanism this machine allows:
  - a cgroup v1 memory controller (root): exceeding the limit is a real kernel OOM kill
    (SIGKILL, exit 137), counted in memory.oom_control, exactly like an OOMKilled pod;
  - a cgroup v2 memory controller delegated to us: the same, counted in memory.events;
  - otherwise an address-space limit (RLIMIT_AS): allocations fail instead, and the
    detector records the MemoryError as ``oom`` itself before it exits.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# RLIMIT_AS counts mapped, not resident, memory: libraries and thread stacks map a few
# hundred MB that are never touched, so the address-space limit gets this headroom.
ADDRESS_SPACE_HEADROOM = 768 * 1024 * 1024


class Enforcement(StrEnum):
    CGROUP_V1 = "cgroup v1 memory controller (kernel OOM kill, exit 137)"
    CGROUP_V2 = "cgroup v2 memory controller (kernel OOM kill, exit 137)"
    ADDRESS_SPACE = "address-space limit (allocations fail; the detector reports oom)"


@dataclass
class Slot:
    """The memory limit of one worker process."""

    enforcement: Enforcement
    limit_bytes: int
    path: Path | None = None

    def preexec(self) -> Callable[[], None]:
        """Runs in the child before exec: joins the cgroup or sets the rlimit."""
        path, limit = self.path, self.limit_bytes

        if path is not None:

            def join() -> None:
                (path / "cgroup.procs").write_text(str(os.getpid()))

            return join

        def cap() -> None:
            total = limit + ADDRESS_SPACE_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (total, total))

        return cap

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this slot for memory."""
        if self.path is None:
            return False
        name = (
            "memory.oom_control" if self.enforcement is Enforcement.CGROUP_V1 else ("memory.events")
        )
        try:
            text = (self.path / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def cleanup(self) -> None:
        if self.path is not None:
            _rmdir(self.path)


class MemoryLimiter:
    """Makes one Slot per worker under a cgroup of its own (or rlimits)."""

    def __init__(self, enforcement: Enforcement, base: Path | None) -> None:
        self.enforcement = enforcement
        self.base = base

    @classmethod
    def detect(cls, *, allow_cgroups: bool = True) -> MemoryLimiter:
        tag = f"facescan-{os.getpid()}"
        if allow_cgroups:
            v1 = CGROUP_ROOT / "memory"
            if (v1 / "memory.limit_in_bytes").exists() and os.access(v1, os.W_OK):
                try:
                    (v1 / tag).mkdir(exist_ok=True)
                    return cls(Enforcement.CGROUP_V1, v1 / tag)
                except OSError:
                    pass
            control = CGROUP_ROOT / "cgroup.subtree_control"
            try:
                delegated = "memory" in control.read_text().split()
            except OSError:
                delegated = False
            if delegated and os.access(CGROUP_ROOT, os.W_OK):
                return cls(Enforcement.CGROUP_V2, CGROUP_ROOT)
        return cls(Enforcement.ADDRESS_SPACE, None)

    def slot(self, name: str, limit_bytes: int) -> Slot:
        """A fresh limit for one worker."""
        if self.base is None:
            return Slot(self.enforcement, limit_bytes)
        if self.enforcement is Enforcement.CGROUP_V1:
            path = self.base / name
            _rmdir(path)  # one left by a killed earlier process of this pid (empty: no task)
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_bytes))
            return Slot(self.enforcement, limit_bytes, path)
        path = self.base / f"facescan-{os.getpid()}-{name}"
        _rmdir(path)
        path.mkdir()
        (path / "memory.max").write_text(str(limit_bytes))
        if (path / "memory.swap.max").exists():
            (path / "memory.swap.max").write_text("0")
        return Slot(self.enforcement, limit_bytes, path)

    def close(self) -> None:
        if self.enforcement is Enforcement.CGROUP_V1 and self.base is not None:
            for child in self.base.iterdir() if self.base.exists() else ():
                if child.is_dir():
                    _rmdir(child)
            _rmdir(self.base)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
