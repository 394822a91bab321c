"""`facescan scan`: register PATHs and detect until nothing is runnable now, with the
local runner (local.py), then match the new faces to the known people and group the
faces nobody has into unnamed people (incremental clustering); its summary and progress.
Called by cli_scan.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from facescan_operator.commands import (
    CASCADES,
    Model,
    local_time,
    plural,
    registration_lines,
    status_line,
    sum_status,
    utc_iso,
)
from facescan_operator.local import Libraries, LocalOptions, LocalRunner
from facescan_operator.loop import Policy
from facescan_operator.memlimit import MemoryLimiter
from facescan_operator.progress import Progress
from facescan_operator.registration import RegistrationRefused, read_header, register_root
from facescan_operator.sizing import CalibrationTable
from facescan_people.clustering import ClusterReport, cluster_incremental
from facescan_people.models import SyncReport
from facescan_people.repository import PeopleDb
from facescan_people.sync import sync as sync_people
from facescan_queue.defaults import DEFAULT_FRAMES_PER_VIDEO
from facescan_queue.models import LibraryPolicy, QueueStatus, Registered
from facescan_queue.repository import Queue

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
    frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO
    """Frames sampled per video (written to the library row, where detectors read it)."""


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
    people: SyncReport = field(default_factory=SyncReport)
    """What matching the new faces to the known people did (`people sync`)."""
    clustered: dict[str, ClusterReport] = field(default_factory=dict)
    """What grouping the faces nobody has did, by library (`people cluster`)."""
    face_frames: dict[str, list[int]] = field(default_factory=dict)
    """Of the videos among faces_by_image: the timestamps (ms) of the frames with faces."""

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
            "people": self.people.as_json(),
            "clustered": {k: v.as_json() for k, v in self.clustered.items()},
        }

    def text(self) -> str:
        lines = [f"warning: {warning}" for warning in self.warnings]
        lines += [
            f"{path}: {plural(n, 'face')}{_frames(self.face_frames.get(path))}"
            for path, n in self.faces_by_image
        ]
        lines += registration_lines(self.registration)
        lines.append(status_line(self.totals))
        if self.people.people:
            lines.append(self.people.text())
        lines += [
            f"clustering {r.text(name)} (`facescan people list` shows them)"
            for name, r in self.clustered.items()
            if r.assigned or r.removed
        ]
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
    # the detectors read the cascade and the max dimension from the library row
    policy = LibraryPolicy(
        cascade_models=tuple(m for m, _ in cascade),
        cascade_scales=tuple(s for _, s in cascade),
        max_dimension=options.max_dimension,
        frames_per_video=options.frames_per_video,
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
            image = dataclasses.replace(read_header(path), path=path.name)
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
        Progress(queue, list(libraries.roots), options.progress, options.progress_every_s)
        if options.progress or options.progress_every_s
        else None
    )
    runner = LocalRunner(queue, dsn, local, limiter, on_tick=progress.update if progress else None)
    try:
        await runner.run(libraries)
    finally:
        if progress:
            progress.finish()
    people_db = PeopleDb(queue)
    people = await sync_people(people_db, libraries.roots)  # new faces to known people
    clustered = {  # then the faces nobody has into unnamed people
        name: await cluster_incremental(people_db, name) for name in libraries.roots
    }
    per_library = {name: await queue.status(name) for name in libraries.roots}
    retries = [await queue.next_retry(name) for name in libraries.roots]
    faces_by_image: list[tuple[str, int]] = []
    face_frames: dict[str, list[int]] = {}
    totals = sum_status(per_library.values())
    if totals.images <= PER_IMAGE_LINES:
        for name in libraries.roots:
            faces_by_image += await _faces_per_image(queue, name)
            frames = await queue.video_face_frames(name)
            face_frames |= {str(Path(name) / path): ms for path, ms in frames.items()}
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
        people,
        clustered,
        face_frames,
    )


PER_IMAGE_LINES = 30
"""`scan` prints a line per image (its faces) for this many images or fewer."""


async def _faces_per_image(queue: Queue, library: str) -> list[tuple[str, int]]:
    return [(str(Path(library) / p), n) for p, n in await queue.faces_per_image(library)]


def _frames(timestamps: list[int] | None) -> str:
    """' at 2.0 s, 3.0 s' for a video's frames with faces ('' for a photo)."""
    if not timestamps:
        return ""
    return " at " + ", ".join(f"{ms / 1000:.1f} s" for ms in timestamps)
