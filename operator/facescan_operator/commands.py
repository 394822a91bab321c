"""What each `facescan` command does, apart from parsing arguments (cli.py) and opening the
database. Returns plain data the CLI prints as text or JSON.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from facescan_operator.local import Libraries, LocalOptions, LocalRunner
from facescan_operator.loop import Policy
from facescan_operator.memlimit import MemoryLimiter
from facescan_operator.registration import RegistrationRefused, read_header, register_root
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue import defaults
from facescan_queue.errors import UnknownImage, UnknownLibrary
from facescan_queue.models import LibraryPolicy, NewImage, QueueStatus, Registered
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType, ImageState


class Model(StrEnum):
    HOG = "hog"
    CNN = "cnn"
    INSIGHTFACE = "insightface"


CASCADES: dict[Model, defaults.Cascade] = {
    Model.HOG: defaults.HOG_CASCADE,
    Model.CNN: defaults.CNN_CASCADE,
    Model.INSIGHTFACE: defaults.INSIGHTFACE_CASCADE,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '1048576' -> bytes. Units are binary, as docker and free
    read them: '2G' is the Kubernetes quantity '2Gi', which the Kubernetes client parses."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (try 2G or 512M)")
    from kubernetes.utils import quantity  # the client takes 0.4 s to import: not at start

    unit = (match[2] or "")[:1].upper()
    return int(quantity.parse_quantity(match[1] + (f"{unit}i" if unit else "")))


MIN_MAX_DIMENSION = 160
"""The smallest --max-dimension (but 0, no cap) a detector can use: at the cascade's
smallest scale (0.25) it leaves a 40 px face, the smallest dlib's detectors find at
upsample 1. Below it every image would be done with 0 faces."""


def check_max_dimension(value: int) -> int:
    """--max-dimension: 0 (no cap) or at least MIN_MAX_DIMENSION; ValueError otherwise."""
    if value != 0 and value < MIN_MAX_DIMENSION:
        raise ValueError(
            f"--max-dimension {value} is too small for any detector: give 0 (no cap) or at "
            f"least {MIN_MAX_DIMENSION}"
        )
    return value


def min_memory_limit(model: Model) -> int:
    """The least memory a detector of this model's cascade needs to load its model and
    start an image: the smallest calibrated base of the cascade's models, in bytes."""
    table = CalibrationTable.default()
    base_mb = min(table.cost(m).base_mb for m, _ in CASCADES[model])
    return int(base_mb) * MIB


def check_memory_limit(text: str, model: Model) -> int:
    """--memory-limit in bytes; ValueError if not a size or below min_memory_limit."""
    limit = parse_size(text)
    least = min_memory_limit(model)
    if limit < least:
        raise ValueError(
            f"--memory-limit {text} is below the {least // MIB} MiB a {model} detector needs "
            f"to load its models and start an image: give at least {least // MIB}M"
        )
    return limit


def plural(count: int, word: str) -> str:
    """'1 image', '2 images', '0 faces'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def local_time(when: datetime | None) -> str:
    """A time for a person: this machine's time zone, to the second."""
    if when is None:
        return "-"
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def utc_iso(when: datetime | None) -> str | None:
    """A time for a program: UTC, ISO 8601."""
    return when.astimezone(UTC).isoformat() if when is not None else None


STARTUP_FAILURE_BUDGET = 3
"""Detectors in a row that may die before starting any image before a scan ends (exit 4)."""


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
    """A progress bar redrawn on stderr (stderr is a terminal)."""
    progress_every_s: float | None = None
    """Otherwise a plain progress line on stderr this often (None: none)."""
    rescan: bool = False
    """Redo the images done with another model or max dimension."""


@dataclass
class ScanSummary:
    totals: QueueStatus
    libraries: dict[str, QueueStatus]
    registered: int
    enforcement: str
    events: list[str] = field(default_factory=list)
    faces_by_image: list[tuple[str, int]] = field(default_factory=list)
    other_settings: list[tuple[str, float, int, int]] = field(default_factory=list)
    """(model, scale, max dimension, images) done with other settings and kept."""
    rescanned: int = 0
    """Images done with other settings queued again (--rescan)."""
    settings: str = ""
    """This scan's model and max dimension, as the text names them."""
    next_retry: datetime | None = None
    """When the first image waiting for its retry back-off is due (None: none waits)."""
    registration: Registered = field(default_factory=Registered)
    """What registering the PATHs did besides adding images (changed, returned)."""
    warnings: list[str] = field(default_factory=list)
    """What registering could not do: a root or directories it could not read."""

    def as_json(self) -> dict[str, Any]:
        return {
            **self.totals.as_json(),
            "registered": self.registered,
            "changed": self.registration.changed,
            "returned": self.registration.returned,
            "warnings": self.warnings,
            "rescanned": self.rescanned,
            "done_with_other_settings": sum(n for *_, n in self.other_settings),
            "memory_enforcement": self.enforcement,
            "next_retry": utc_iso(self.next_retry),
            "libraries": {k: v.as_json() for k, v in self.libraries.items()},
        }

    def text(self) -> str:
        lines = [f"warning: {warning}" for warning in self.warnings]
        lines += [f"{path}: {plural(n, 'face')}" for path, n in self.faces_by_image]
        lines += registration_lines(self.registration)
        lines.append(status_line(self.totals))
        t = self.totals
        if t.by_error_type:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t.by_error_type.items()))
            lines.append(f"failing: {kinds} (see `facescan failures`)")
        if self.next_retry is not None:
            lines.append(
                "pending images wait for their retry back-off, the first until "
                f"{local_time(self.next_retry)}: "
                "run `facescan scan` again then, or `facescan requeue` to retry them now"
            )
        if self.rescanned:
            lines.append(f"rescanned {plural(self.rescanned, 'image')} with {self.settings}")
        if self.other_settings:
            kept = sum(n for *_, n in self.other_settings)
            found = ", ".join(
                f"{n} with {model}@{scale:g} at max dimension {_dimension(dim)}"
                for model, scale, dim, n in self.other_settings
            )
            lines.append(
                f"{plural(kept, 'image')} done with other settings kept ({found}), not "
                f"{self.settings}: `facescan scan --rescan` with these options redoes them"
            )
        lines.append(f"memory limits: {self.enforcement}")
        return "\n".join(lines)


def _dimension(value: int) -> str:
    return str(value) if value else "none"


def status_line(t: QueueStatus) -> str:
    """'6 images: 4 done (5 faces, 0 degraded), 1 in progress, 1 pending (1 retrying),
    0 dead': the fields of --json, pending including retrying."""
    return (
        f"{plural(t.images, 'image')}: {t.done} done ({plural(t.faces, 'face')}, "
        f"{t.degraded} degraded), {t.leased} in progress, {t.pending} pending "
        f"({t.retrying} retrying), {t.dead} dead" + (f", {t.missing} missing" if t.missing else "")
    )


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
    rescanned = 0
    registration = Registered()
    warnings: list[str] = []
    other_settings: list[tuple[str, float, int, int]] = []
    process_bound = 0
    for path in paths:
        path = path.resolve()
        root = path if path.is_dir() else path.parent
        name = str(root)
        library = await queue.ensure_library(name, policy)
        if path.is_dir():
            # new and changed files; vanished ones are marked missing by `register` only
            # (here their detector charges them `missing`)
            try:
                found = await register_root(queue, name, root, mark_missing=False)
            except RegistrationRefused as exc:
                warnings.append(str(exc))
            else:
                registration += found.registered
                warnings += [f"could not read {root}/{u}" for u in found.unreadable]
        else:
            header = read_header(path)
            image = NewImage(
                path.name, header.width, header.height, header.file_bytes, header.mtime
            )
            registration += await queue.register_files(name, [image])
        if options.rescan:
            rescanned += await queue.rescan_other_settings(name, cascade, options.max_dimension)
        else:
            other_settings += await queue.done_with_other_settings(
                name, cascade, options.max_dimension
            )
        if name not in libraries.roots:
            s = await queue.status(name)
            # each attempt either steps down the cascade or burns one of the image's attempts
            process_bound += (s.images - s.done - s.dead) * (len(cascade) + library.max_attempts)
        libraries.roots[name] = root
        libraries.policies[name] = Policy(
            cascade=cascade,
            batch_size=options.batch_size,
            workers=options.workers,
            max_dimension=options.max_dimension,
            calibration=CalibrationTable.default(),
        )
    limiter = MemoryLimiter.detect()
    local = LocalOptions(
        workers=options.workers,
        memory_limit=options.memory_limit,
        memory_budget=_memory_budget(),
        image_timeout_s=options.image_timeout_s,
        model_dir=options.model_dir,
        startup_failure_budget=STARTUP_FAILURE_BUDGET,
        # and a start-up budget of detectors per worker slot (probes, workers that die
        # before their first image)
        max_processes=process_bound + options.workers * STARTUP_FAILURE_BUDGET,
    )
    progress = (
        _Progress(queue, list(libraries.roots), options.progress, options.progress_every_s)
        if options.progress or options.progress_every_s
        else None
    )
    runner = LocalRunner(queue, dsn, local, limiter, on_tick=progress.update if progress else None)
    try:
        await runner.run(libraries)
    finally:
        if progress:
            progress.finish()
    per_library = {name: await queue.status(name) for name in libraries.roots}
    retries = [await queue.next_retry(name) for name in libraries.roots]
    faces_by_image: list[tuple[str, int]] = []
    totals = _sum(per_library.values())
    if totals.images <= PER_IMAGE_LINES:
        for name in libraries.roots:
            faces_by_image += await _faces_per_image(queue, name)
    return ScanSummary(
        totals,
        per_library,
        registration.added,
        str(limiter.enforcement),
        runner.events,
        faces_by_image,
        other_settings,
        rescanned,
        f"{options.model} at max dimension {_dimension(options.max_dimension)}",
        min((due for due in retries if due is not None), default=None),
        registration,
        warnings,
    )


PER_IMAGE_LINES = 30
"""`scan` prints a line per image (its faces) for this many images or fewer."""


async def _faces_per_image(queue: Queue, library: str) -> list[tuple[str, int]]:
    return [(str(Path(library) / p), n) for p, n in await queue.faces_per_image(library)]


class _Progress:
    """Progress on stderr, from the counters: on a terminal a bar redrawn each tick with
    the rate and the time left; otherwise a plain line every ``every_s`` seconds."""

    def __init__(
        self, queue: Queue, libraries: list[str], terminal: bool, every_s: float | None
    ) -> None:
        self.queue, self.libraries, self.drawn = queue, libraries, False
        self.terminal, self.every_s = terminal, every_s
        self.started = time.monotonic()
        self.last_line = self.started
        self.first_finished: int | None = None

    async def update(self) -> None:
        now = time.monotonic()
        if not self.terminal and (self.every_s is None or now - self.last_line < self.every_s):
            return
        t = _sum([await self.queue.status(name) for name in self.libraries])
        finished = t.done + t.dead
        if self.first_finished is None:
            self.first_finished = finished  # done before this scan: not in the rate
        elapsed = now - self.started
        rate = (finished - self.first_finished) / elapsed if elapsed > 0 else 0.0
        left = t.pending + t.leased
        eta = _duration(left / rate) if rate > 0 else "?"
        counts = (
            f"{finished}/{t.images} finished, {t.done} done, {plural(t.faces, 'face')}, "
            f"{t.leased} in progress, {t.retrying} retrying, {t.dead} dead, "
            f"{rate:.1f} images/s, {eta} left"
        )
        if self.terminal:
            width = 30
            filled = int(width * finished / t.images) if t.images else width
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {counts}   ")
            self.drawn = True
        else:
            sys.stderr.write(f"progress: {counts}\n")
            self.last_line = now
        sys.stderr.flush()

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def _duration(seconds: float) -> str:
    """'42 s', '3 min', '2 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


_COUNTS = tuple(f.name for f in fields(QueueStatus) if f.name != "by_error_type")
"""QueueStatus's counters, read from the class: one it gains is summed too."""


def _sum(statuses: Iterable[QueueStatus]) -> QueueStatus:
    totals = dict.fromkeys(_COUNTS, 0)
    by_type: Counter[str] = Counter()
    for s in statuses:
        for name in _COUNTS:
            totals[name] += getattr(s, name)
        by_type.update(s.by_error_type)
    return QueueStatus(**totals, by_error_type=dict(by_type))


async def status(queue: Queue, _dsn: str) -> tuple[QueueStatus, dict[str, QueueStatus]]:
    per_library = {name: await queue.status(name) for name in await queue.libraries()}
    return _sum(per_library.values()), per_library


def status_text(totals: QueueStatus, per_library: dict[str, QueueStatus]) -> str:
    lines = [f"{name}: {status_line(s)}" for name, s in per_library.items()]
    t = totals
    lines.append(f"total: {status_line(t)}")
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


async def register(
    queue: Queue, root: Path, library: str | None, *, allow_empty: bool = False
) -> dict[str, Any]:
    """Registers the images under ``root`` (header reads only, no detection) in
    ``library``, by default the one `facescan scan` would use: the absolute directory.
    Changed files are detected again; after a complete walk, registered images whose
    file is gone are marked missing (RegistrationRefused: see register_root)."""
    root = root.resolve()
    name = library or str(root)
    await queue.ensure_library(name)
    found = await register_root(queue, name, root, allow_empty=allow_empty)
    return found.as_json()


def register_text(result: dict[str, Any]) -> str:
    lines = [
        f"{plural(result['images'], 'image')} under {result['root']}: {result['registered']} "
        f"new in library {result['library']}"
    ]
    lines += registration_lines(
        Registered(
            changed=result["changed"],
            deferred=result["deferred"],
            returned=result["returned"],
            missing=result["missing"],
        )
    )
    if result["without_size"]:
        lines.append(
            f"{result['without_size']} whose header could not be read: registered without "
            "a size; the detector will record why"
        )
    if result["unreadable"]:
        lines.append(
            f"could not read ({'; '.join(result['unreadable'])}): walk incomplete, nothing "
            "marked missing"
        )
    return "\n".join(lines)


def registration_lines(r: Registered) -> list[str]:
    """What a registration did besides adding images, one line each (none if nothing)."""
    lines = []
    if r.changed:
        lines.append(
            f"{plural(r.changed, 'changed file')} queued again from the first cascade step "
            "(old faces deleted)"
        )
    if r.deferred:
        lines.append(
            f"{plural(r.deferred, 'changed file')} being detected now: queued again by the "
            "next registration"
        )
    if r.missing:
        lines.append(
            f"{plural(r.missing, 'image')} marked missing (file gone; faces kept, not "
            "detected until it is back)"
        )
    if r.returned:
        lines.append(f"{plural(r.returned, 'missing image')} back")
    return lines


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
                    "next_retry_at": utc_iso(f.next_retry_at),
                    "dead": f.dead,
                }
            )
    return rows


def failures_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no failing images"
    lines = []
    for r in rows:
        retry = r["next_retry_at"]
        when = "dead" if r["dead"] else f"retry at {local_time(_parse_time(retry))}"
        attempts = plural(r["attempts"], "attempt")
        lines.append(f"{r['path']}\t{r['error_type']}\t{attempts}\t{when}\t{r['last_error']}")
    return "\n".join(lines)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


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
    by_library = await _registered(queue, paths, library)
    return sum(
        [
            await queue.requeue(name, only_dead=dead, error_type=error_type, paths=relatives)
            for name, relatives in by_library.items()
        ]
    )


async def _registered(queue: Queue, paths: list[Path], library: str | None) -> dict[str, list[str]]:
    """Library -> relative paths of the images named; UnknownImage for a path that is not
    a registered image (as `faces` says)."""
    by_library: dict[str, list[str]] = {}
    for path in paths:
        name, relative = await _locate(queue, path, library)
        await queue.image(name, relative)
        by_library.setdefault(name, []).append(relative)
    return by_library


async def rescan(queue: Queue, paths: list[Path], every: bool, library: str | None = None) -> int:
    """Queues done images again from the first cascade step (degraded ones only unless
    ``every``): PATHs are image files or scanned directories; without PATH every library
    (or ``library``). The next `facescan scan` (or operator tick) detects them."""
    if not paths:
        return sum(
            [
                await queue.rescan(name, only_degraded=not every)
                for name in await _libraries(queue, library)
            ]
        )
    names = await queue.libraries()
    count = 0
    files: list[Path] = []
    for path in paths:
        if library is None and str(path.resolve()) in names:
            count += await queue.rescan(str(path.resolve()), only_degraded=not every)
        else:
            files.append(path)
    for name, relatives in (await _registered(queue, files, library)).items():
        count += await queue.rescan(name, only_degraded=not every, paths=relatives)
    return count


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
