"""What the `facescan` commands share, and the library commands: the models and their
cascades, checks of sizes and dimensions, counts as text, `status`, `register` and
`import-legacy`, and how a PATH is found in a scanned library (:func:`locate`). `scan` is
scanning.py's, the per-image commands inspection.py's. Each returns plain data the CLI
(cli_*.py) prints as text or JSON.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from facescan_operator.registration import read_header, register_root
from facescan_operator.sizing import MIB, CalibrationTable
from facescan_queue import defaults
from facescan_queue.errors import UnknownImage, UnknownLibrary
from facescan_queue.models import NewImage, QueueStatus, Registered
from facescan_queue.repository import Queue


class Model(StrEnum):
    HOG = "hog"
    CNN = "cnn"
    INSIGHTFACE = "insightface"


CASCADES: dict[Model, defaults.Cascade] = {Model(m): c for m, c in defaults.CASCADES.items()}

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


def status_line(t: QueueStatus) -> str:
    """'6 images: 4 done (5 faces, 0 degraded), 1 in progress, 1 pending (1 retrying),
    0 dead': the fields of --json, pending including retrying."""
    return (
        f"{plural(t.images, 'image')}: {t.done} done ({plural(t.faces, 'face')}, "
        f"{t.degraded} degraded), {t.leased} in progress, {t.pending} pending "
        f"({t.retrying} retrying), {t.dead} dead"
        + (f", {t.missing} missing" if t.missing else "")
        + (
            f"; of them {plural(t.videos, 'video')} ({t.videos_done} done, "
            f"{plural(t.video_faces, 'face')} in their frames)"
            if t.videos
            else ""
        )
    )


_COUNTS = tuple(f.name for f in fields(QueueStatus) if f.name != "by_error_type")
"""QueueStatus's counters, read from the class: one it gains is summed too."""


def sum_status(statuses: Iterable[QueueStatus]) -> QueueStatus:
    totals = dict.fromkeys(_COUNTS, 0)
    by_type: Counter[str] = Counter()
    for s in statuses:
        for name in _COUNTS:
            totals[name] += getattr(s, name)
        by_type.update(s.by_error_type)
    return QueueStatus(**totals, by_error_type=dict(by_type))


async def status(queue: Queue, _dsn: str) -> tuple[QueueStatus, dict[str, QueueStatus]]:
    per_library = {name: await queue.status(name) for name in await queue.libraries()}
    return sum_status(per_library.values()), per_library


def status_text(totals: QueueStatus, per_library: dict[str, QueueStatus]) -> str:
    lines = [f"{name}: {status_line(s)}" for name, s in per_library.items()]
    t = totals
    lines.append(f"total: {status_line(t)}")
    if t.by_error_type:
        lines.append(
            "failing by type: " + ", ".join(f"{k} {v}" for k, v in sorted(t.by_error_type.items()))
        )
    return "\n".join(lines)


async def libraries(queue: Queue, library: str | None) -> list[str]:
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


async def locate(queue: Queue, path: Path, library: str | None = None) -> tuple[str, str]:
    """(library, relative path) of a file under a scanned library root, or of a path
    relative to the library named."""
    if library is not None:
        (name,) = await libraries(queue, library)
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
