"""What the detector can run on: CPUs, onnxruntime execution providers, dlib's CUDA build.

The InsightFace backend calls :func:`select_providers` when it opens its sessions;
``calibrate`` and the detector's start-up log call :func:`describe_hardware`; the
detector sizes its HOG threads with :func:`usable_cpus`. The
libraries are imported inside the functions, so a HOG detector never pays for
onnxruntime.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facescan_detector.errors import StartupError

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
)
"""Preferred accelerators, best first; CPU is always the fallback."""


@dataclass(frozen=True)
class HardwareInfo:
    """A JSON-friendly description of the machine, for logs and calibration tables."""

    machine: str
    cpu_count: int
    usable_cpus: int
    memory_mb: int | None
    onnxruntime_version: str | None
    onnxruntime_providers: list[str] = field(default_factory=list)
    selected_providers: list[str] = field(default_factory=list)
    dlib_version: str | None = None
    dlib_cuda: bool = False
    dlib_cuda_devices: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (json.dumps-able)."""
        return asdict(self)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return [str(name) for name in onnxruntime.get_available_providers()]


def select_providers(
    requested: Sequence[str] | None = None, *, available: Sequence[str] | None = None
) -> list[str]:
    """The providers to open sessions with: the best GPU one plus CPU, or CPU alone.

    ``requested`` (from configuration) overrides the preference; asking for a provider
    this build lacks is a StartupError rather than a silent fall back to CPU.
    """
    offered = list(available_providers() if available is None else available)
    if requested:
        missing = [name for name in requested if name not in offered]
        if missing:
            raise StartupError(
                f"execution provider(s) {missing} not available; this onnxruntime offers {offered}"
            )
        chosen = list(requested)
    else:
        gpu = next((name for name in GPU_PROVIDERS if name in offered), None)
        chosen = [gpu, CPU_PROVIDER] if gpu else [CPU_PROVIDER]
    log.info("onnxruntime execution providers: %s (available: %s)", chosen, offered)
    return chosen


def is_gpu_provider(name: str) -> bool:
    """Whether a session running on provider ``name`` allocates on a GPU."""
    return name != CPU_PROVIDER and name != "AzureExecutionProvider"


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs of the cgroup CPU limit (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), if any."""
    try:
        fields = (cgroup / "cpu.max").read_text().split()
    except OSError:
        try:
            quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
        return quota / period if quota > 0 and period > 0 else None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]) / int(fields[1])
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may keep busy: its CPU affinity, capped by a container's
    CPU limit (a limit of 1.5 CPUs counts as 2: the half is worth a thread)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _memory_mb() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages * page_size // (1024 * 1024))


def describe_hardware() -> HardwareInfo:
    """CPU, memory, onnxruntime providers (and the ones we would pick), dlib's CUDA."""
    ort_version: str | None
    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
    except ImportError:
        ort_version = None
    offered = available_providers()
    dlib_version: str | None = None
    dlib_cuda = False
    devices = 0
    try:
        import dlib

        dlib_version = str(dlib.__version__)
        dlib_cuda = bool(dlib.DLIB_USE_CUDA)
        if dlib_cuda:
            devices = int(dlib.cuda.get_num_devices())
    except ImportError:
        pass
    return HardwareInfo(
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        usable_cpus=usable_cpus(),
        memory_mb=_memory_mb(),
        onnxruntime_version=ort_version,
        onnxruntime_providers=offered,
        selected_providers=select_providers(available=offered) if offered else [],
        dlib_version=dlib_version,
        dlib_cuda=dlib_cuda,
        dlib_cuda_devices=devices,
    )
