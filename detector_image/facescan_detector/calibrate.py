"""Measure what each detection model costs on this machine, to size detector Jobs.

The ``facescan-detector calibrate`` command (wired in the CLI) calls :func:`calibrate`
and prints its JSON; the operator sizes a Job's memory as ``base_mb + megapixels x
mb_per_megapixel`` of the step's model. Every measurement runs in a fresh Python
process, so its peak RSS holds only one model and one image: the child loads the model
(base = RSS then, in MiB), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``;
without it ``ru_maxrss``, which also counts load-time peaks), detects, and reports the
peak. Megapixels are those of the array given to ``detect`` (before dlib's upsampling).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facescan_detector.backends import create_detector
from facescan_detector.backends.hardware import describe_hardware
from facescan_detector.errors import StartupError


def calibrate(
    models: Sequence[str],
    *,
    sizes: Sequence[int] = (640, 1280),
    image: Path | None = None,
    upsample: int = 1,
    model_dir: Path | None = None,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Per model: ``base_mb + megapixels x mb_per_megapixel`` bounds a detector's peak
    RSS, ``base_seconds + megapixels x seconds_per_megapixel`` its time per image.

    ``sizes`` are long sides the image is resized to (one child process each).
    ``image`` should be a photograph with faces (encoding costs per face); without one
    a synthetic image with no faces is used. Each pair is a line fitted over ``sizes``
    and raised to cover every measurement; ``model_mb`` is the RSS with the model
    loaded, ``runs`` the raw measurements. A model that cannot start (InsightFace without
    its model directory) or whose measurement fails (out of memory, past ``timeout_s``)
    is reported with ``available: false`` and the reason.
    """
    result: dict[str, Any] = {
        "machine": describe_hardware().as_dict(),
        "settings": {
            "sizes": list(sizes),
            "image": str(image) if image else "synthetic",
            "upsample": upsample,
            "units": "MiB, seconds, megapixels of the detector's input array",
        },
        "models": {},
    }
    for model in models:
        runs = []
        reason = None
        for size in sizes:
            run = _measure(model, size, image, upsample, model_dir, timeout_s)
            if "unavailable" in run:
                reason = run["unavailable"]
                break
            runs.append(run)
        if reason is not None:
            result["models"][model] = {"available": False, "reason": reason}
            continue
        mb_base, mb_slope = _covering_line(
            [(r["megapixels"], r["peak_mb"] - r["base_mb"]) for r in runs]
        )
        s_base, s_slope = _covering_line([(r["megapixels"], r["seconds"]) for r in runs])
        result["models"][model] = {
            "available": True,
            "base_mb": round(max(r["base_mb"] for r in runs) + mb_base, 1),
            "mb_per_megapixel": round(mb_slope, 1),
            "base_seconds": round(s_base, 4),
            "seconds_per_megapixel": round(s_slope, 4),
            "model_mb": round(max(r["base_mb"] for r in runs), 1),
            "load_seconds": round(max(r["load_seconds"] for r in runs), 3),
            "runs": runs,
        }
    return result


def _covering_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of a line through ``points`` (x = megapixels) that lies on or
    above every one: the least-squares slope (never negative), the intercept raised to
    cover the worst point. One point gives a line through the origin."""
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if len(points) < 2 or np.ptp(xs) == 0:
        return 0.0, float(np.max(ys / xs))
    slope = max(float(np.polyfit(xs, ys, 1)[0]), 0.0)
    return max(float(np.max(ys - slope * xs)), 0.0), slope


def _measure(
    model: str,
    size: int,
    image: Path | None,
    upsample: int,
    model_dir: Path | None,
    timeout_s: float,
) -> dict[str, Any]:
    """One measurement in a fresh interpreter (same sys.path as this one)."""
    request = {
        "model": model,
        "size": size,
        "image": str(image) if image else None,
        "upsample": upsample,
        "model_dir": str(model_dir) if model_dir else None,
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    code = "from facescan_detector.calibrate import _child_main; _child_main()"
    try:
        completed = subprocess.run(
            [sys.executable, "-c", code, json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"unavailable": f"measurement at {size} px ran past {timeout_s} s"}
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = completed.stderr.strip()[-2000:]
        return {"unavailable": f"measurement at {size} px failed ({completed.returncode}): {tail}"}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _synthetic_image(size: int) -> Image.Image:
    """A deterministic textured image (no faces) when no photograph is given."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((size, size * 3 // 4), Image.Resampling.BILINEAR)


def _pixels(image: str | None, size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    if image is None:
        picture = _synthetic_image(size)
    else:
        with Image.open(image) as opened:
            picture = opened.convert("RGB")
    scale = size / max(picture.size)
    target = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.asarray(picture.resize(target, Image.Resampling.LANCZOS))


def _child_main() -> None:
    """Entry point of the measuring child: prints one JSON line."""
    request = json.loads(sys.argv[1])
    detector = create_detector(
        request["model"],
        upsample=request["upsample"],
        model_dir=Path(request["model_dir"]) if request["model_dir"] else None,
    )
    started = time.perf_counter()
    try:
        detector.load()
    except StartupError as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return
    load_seconds = time.perf_counter() - started
    gc.collect()
    base = _proc_status_mb("VmRSS")
    pixels = _pixels(request["image"], request["size"])
    gc.collect()
    reset = _reset_peak_rss()
    started = time.perf_counter()
    faces = detector.detect(pixels)
    seconds = time.perf_counter() - started
    peak = _proc_status_mb("VmHWM") if reset else None
    if base is None or peak is None:  # no /proc: ru_maxrss (KiB on Linux) is all we have
        base = base or 0.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    height, width = pixels.shape[:2]
    report = {
        "size": request["size"],
        "width": width,
        "height": height,
        "megapixels": round(width * height / 1e6, 4),
        "faces": len(faces),
        "load_seconds": round(load_seconds, 3),
        "base_mb": round(base, 1),
        "peak_mb": round(peak, 1),
        "peak_source": "VmHWM" if reset else "ru_maxrss",
        "seconds": round(seconds, 4),
    }
    print(json.dumps(report))
