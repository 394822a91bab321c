"""What each `facescan` command does, apart from parsing arguments (cli.py) and opening the
database. Returns plain data the CLI prints as text or JSON.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from facescan_operator.local import Libraries, LocalOptions, LocalRunner
from facescan_operator.memlimit import MemoryLimiter
from facescan_operator.planner import PlanSettings
from facescan_operator.registration import read_header, scan_directory
from facescan_operator.sizing import CalibrationTable
from facescan_queue.errors import UnknownImage, UnknownLibrary
from facescan_queue.models import LibraryPolicy, NewImage, QueueStatus
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType, ImageState


class Model(StrEnum):
    HOG = "hog"
    CNN = "cnn"
    INSIGHTFACE = "insightface"


CASCADES: dict[Model, tuple[tuple[str, float], ...]] = {
    Model.HOG: (("hog", 1.0),),
    Model.CNN: (
        ("cnn", 1.0),
        ("cnn", 0.75),
        ("cnn", 0.5),
        ("cnn", 0.33),
        ("cnn", 0.25),
        ("hog", 1.0),
    ),
    Model.INSIGHTFACE: (("insightface", 1.0), ("insightface", 0.5), ("hog", 1.0)),
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '1048576' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (try 2G or 512M)")
    return int(float(match[1]) * _UNITS[(match[2] or "")[:1].upper()])


@dataclass(frozen=True)
class ScanOptions:
    model: Model
    workers: int
    memory_limit: int | None
    max_dimension: int
    batch_size: int
    image_timeout_s: float
    model_dir: Path | None
    progress: bool


@dataclass
class ScanSummary:
    totals: QueueStatus
    libraries: dict[str, QueueStatus]
    registered: int
    enforcement: str
    events: list[str] = field(default_factory=list)
    faces_by_image: list[tuple[str, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            **self.totals.as_json(),
            "registered": self.registered,
            "memory_enforcement": self.enforcement,
            "libraries": {k: v.as_json() for k, v in self.libraries.items()},
        }

    def text(self) -> str:
        lines = [f"{path}: {n} face{'s' if n != 1 else ''}" for path, n in self.faces_by_image]
        t = self.totals
        lines.append(
            f"{t.images} images: {t.done} done ({t.faces} faces, {t.degraded} degraded), "
            f"{t.retrying} retrying, {t.dead} dead, {t.pending - t.retrying} pending"
        )
        if t.by_error_type:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t.by_error_type.items()))
            lines.append(f"failing: {kinds} (see `facescan failures`)")
        lines.append(f"memory limits: {self.enforcement}")
        return "\n".join(lines)


def _memory_budget() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * 0.8)
    except OSError:
        pass
    return None


async def scan(queue: Queue, dsn: str, paths: list[Path], options: ScanOptions) -> ScanSummary:
    cascade = CASCADES[options.model]
    policy = LibraryPolicy(
        cascade_models=tuple(m for m, _ in cascade), cascade_scales=tuple(s for _, s in cascade)
    )
    libraries = Libraries({}, {})
    registered = 0
    for path in paths:
        path = path.resolve()
        root = path if path.is_dir() else path.parent
        name = str(root)
        await queue.ensure_library(name, policy)
        if path.is_dir():
            images = scan_directory(root)
        else:
            header = read_header(path)
            images = [NewImage(path.name, header.width, header.height, header.file_bytes)]
        registered += await queue.register(name, images)
        libraries.roots[name] = root
        libraries.settings[name] = PlanSettings(
            cascade=cascade,
            batch_size=options.batch_size,
            max_dimension=options.max_dimension,
            calibration=CalibrationTable.default(),
        )
    limiter = MemoryLimiter.detect()
    local = LocalOptions(
        workers=options.workers,
        batch_size=options.batch_size,
        max_dimension=options.max_dimension,
        memory_limit=options.memory_limit,
        memory_budget=_memory_budget(),
        image_timeout_s=options.image_timeout_s,
        model_dir=options.model_dir,
    )
    progress = _Progress(queue, list(libraries.roots)) if options.progress else None
    runner = LocalRunner(queue, dsn, local, limiter, on_tick=progress.update if progress else None)
    try:
        await runner.run(libraries)
    finally:
        if progress:
            progress.finish()
    per_library = {name: await queue.status(name) for name in libraries.roots}
    faces_by_image: list[tuple[str, int]] = []
    totals = _sum(per_library.values())
    if totals.images <= 30:
        for name in libraries.roots:
            faces_by_image += await _faces_per_image(queue, name)
    return ScanSummary(
        totals, per_library, registered, str(limiter.enforcement), runner.events, faces_by_image
    )


async def _faces_per_image(queue: Queue, library: str) -> list[tuple[str, int]]:
    return [(str(Path(library) / p), n) for p, n in await queue.faces_per_image(library)]


class _Progress:
    """A one-line progress bar on stderr, redrawn from the counters."""

    def __init__(self, queue: Queue, libraries: list[str]) -> None:
        self.queue, self.libraries, self.drawn = queue, libraries, False

    async def update(self) -> None:
        t = _sum([await self.queue.status(name) for name in self.libraries])
        finished = t.done + t.dead
        width = 30
        filled = int(width * finished / t.images) if t.images else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(
            f"\r[{bar}] {finished}/{t.images} done {t.done} faces {t.faces} "
            f"retrying {t.retrying} dead {t.dead} running {t.leased}   "
        )
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def _sum(statuses: Any) -> QueueStatus:
    fields = ("images", "pending", "leased", "done", "degraded", "retrying", "dead", "faces")
    totals = dict.fromkeys(fields, 0)
    by_type: dict[str, int] = {}
    for s in statuses:
        for f in fields:
            totals[f] += getattr(s, f)
        for k, v in s.by_error_type.items():
            by_type[k] = by_type.get(k, 0) + v
    return QueueStatus(**totals, by_error_type=by_type)


async def status(queue: Queue, _dsn: str) -> tuple[QueueStatus, dict[str, QueueStatus]]:
    per_library = {name: await queue.status(name) for name in await queue.libraries()}
    return _sum(per_library.values()), per_library


def status_text(totals: QueueStatus, per_library: dict[str, QueueStatus]) -> str:
    lines = []
    for name, s in per_library.items():
        lines.append(
            f"{name}: {s.images} images, {s.done} done, {s.faces} faces, {s.degraded} "
            f"degraded, {s.retrying} retrying, {s.dead} dead, {s.leased} in progress"
        )
    t = totals
    lines.append(
        f"total: {t.images} images, {t.done} done, {t.faces} faces, "
        f"{t.retrying} retrying, {t.dead} dead"
    )
    if t.by_error_type:
        lines.append(
            "failing by type: " + ", ".join(f"{k} {v}" for k, v in sorted(t.by_error_type.items()))
        )
    return "\n".join(lines)


async def _libraries(queue: Queue, library: str | None) -> list[str]:
    """Every library, or the one named (UnknownLibrary if there is none of that name)."""
    names = await queue.libraries()
    if library is None:
        return names
    if library not in names:
        raise UnknownLibrary(f"no library {library!r} (libraries: {', '.join(names) or 'none'})")
    return [library]


async def register(queue: Queue, root: Path, library: str | None) -> dict[str, Any]:
    """Registers the images under ``root`` (header reads only, no detection) in
    ``library``, by default the one `facescan scan` would use: the absolute directory."""
    root = root.resolve()
    name = library or str(root)
    await queue.ensure_library(name)
    images = scan_directory(root)
    added = await queue.register(name, images)
    return {
        "library": name,
        "root": str(root),
        "images": len(images),
        "registered": added,
        "without_size": sum(1 for i in images if i.width is None),
    }


def register_text(result: dict[str, Any]) -> str:
    text = (
        f"{result['images']} images under {result['root']}: {result['registered']} new in "
        f"library {result['library']}"
    )
    if result["without_size"]:
        text += (
            f"\n{result['without_size']} whose header could not be read: registered without "
            "a size; the detector will record why"
        )
    return text


async def failures(
    queue: Queue, error_type: ErrorType | None, dead: bool, library: str | None = None
) -> list[dict[str, Any]]:
    rows = []
    for name in await _libraries(queue, library):
        for f in await queue.failures(name, error_type=error_type, dead_only=dead):
            rows.append(
                {
                    "path": str(Path(name) / f.path) if name.startswith("/") else f.path,
                    "library": name,
                    "error_type": str(f.error_type),
                    "attempts": f.attempts,
                    "last_error": f.last_error,
                    "next_retry_at": f.next_retry_at.isoformat() if f.next_retry_at else None,
                    "dead": f.dead,
                }
            )
    return rows


def failures_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no failing images"
    lines = []
    for r in rows:
        when = "dead" if r["dead"] else f"retry at {r['next_retry_at']}"
        lines.append(
            f"{r['path']}\t{r['error_type']}\t{r['attempts']} attempts\t{when}\t{r['last_error']}"
        )
    return "\n".join(lines)


async def _locate(queue: Queue, path: Path, library: str | None = None) -> tuple[str, str]:
    """(library, relative path) of a file under a scanned library root, or of a path
    relative to the library named."""
    if library is not None:
        (name,) = await _libraries(queue, library)
        return name, str(path)
    absolute = path.resolve() if path.exists() else path.absolute()
    best: str | None = None
    for name in await queue.libraries():
        root = Path(name)
        if (
            root.is_absolute()
            and absolute.is_relative_to(root)
            and (best is None or len(name) > len(best))
        ):
            best = name
    if best is None:
        raise UnknownImage(f"{path} is not under any scanned library")
    return best, str(absolute.relative_to(best))


async def faces(queue: Queue, path: Path, library: str | None = None) -> dict[str, Any]:
    library, relative = await _locate(queue, path, library)
    image = await queue.image(library, relative)
    rows = await queue.faces(image["id"]) if image["state"] == ImageState.DONE else []
    return {
        "path": str(Path(library) / relative) if library.startswith("/") else relative,
        "library": library,
        "state": image["state"],
        "model": image["model"],
        "scale": image["scale"],
        "width": image["original_width"] or image["width"],
        "height": image["original_height"] or image["height"],
        "faces": [
            {
                "top": r["box_top"],
                "right": r["box_right"],
                "bottom": r["box_bottom"],
                "left": r["box_left"],
                "score": r["score"],
                "model": r["model"],
                "scale": r["scale"],
            }
            for r in rows
        ],
    }


def faces_text(result: dict[str, Any]) -> str:
    head = f"{result['path']}: {result['state']}"
    if result["state"] != ImageState.DONE:
        return head + " (no result yet; see `facescan failures`)"
    n = len(result["faces"])
    lines = [
        f"{head}, {n} face{'s' if n != 1 else ''} ({result['model']}@{result['scale']:g}, "
        f"{result['width']}x{result['height']})"
    ]
    for f in result["faces"]:
        lines.append(
            f"  top {f['top']} right {f['right']} bottom {f['bottom']} "
            f"left {f['left']} score {f['score']:.2f}"
        )
    return "\n".join(lines)


async def requeue(
    queue: Queue,
    paths: list[Path],
    dead: bool,
    error_type: ErrorType | None,
    library: str | None = None,
) -> int:
    if not paths:
        return sum(
            [
                await queue.requeue(name, only_dead=dead, error_type=error_type)
                for name in await _libraries(queue, library)
            ]
        )
    by_library: dict[str, list[str]] = {}
    for path in paths:
        name, relative = await _locate(queue, path, library)
        by_library.setdefault(name, []).append(relative)
    return sum(
        [
            await queue.requeue(name, only_dead=dead, error_type=error_type, paths=relatives)
            for name, relatives in by_library.items()
        ]
    )


async def import_legacy(
    queue: Queue, _dsn: str, root: Path, library: str | None = None
) -> dict[str, Any]:
    root = root.absolute()
    name = library or str(root)
    await queue.ensure_library(name)
    rows = await queue.legacy_images()
    fresh: list[NewImage] = []
    processed: list[NewImage] = []
    outside: list[str] = []
    for image_path, is_processed in rows:
        raw = Path(image_path)
        full = raw if raw.is_absolute() else root / raw
        if not full.is_relative_to(root) or ".." in full.parts:
            outside.append(str(raw))
            continue
        header = read_header(full) if full.exists() else NewImage(str(full))
        image = NewImage(
            str(full.relative_to(root)), header.width, header.height, header.file_bytes
        )
        (processed if is_processed else fresh).append(image)
    added = await queue.register(name, fresh, priority=1)
    added += await queue.register(name, processed, priority=0)
    return {
        "library": name,
        "rows": len(rows),
        "registered": added,
        "unprocessed": len(fresh),
        "processed": len(processed),
        "outside_root": outside,
    }


def import_text(result: dict[str, Any]) -> str:
    text = (
        f"{result['rows']} rows read from ai_metadata: {result['registered']} new images "
        f"in {result['library']} ({result['unprocessed']} never processed, queued first)"
    )
    if result["outside_root"]:
        text += f"\n{len(result['outside_root'])} paths outside {result['library']} skipped"
    return text
