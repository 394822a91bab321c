"""The commands that read and requeue single images: `failures`, `faces`, `requeue`,
`rescan` (the queue's state per image). Called by cli_queue.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from facescan_operator.commands import (
    libraries,
    local_time,
    locate,
    plural,
    utc_iso,
)
from facescan_people.directory import NOBODY, faces_of_image, image_people
from facescan_people.repository import PeopleDb
from facescan_queue.errors import PermissionDenied
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType, ImageState


async def failures(
    queue: Queue, error_type: ErrorType | None, dead: bool, library: str | None = None
) -> list[dict[str, Any]]:
    rows = []
    for name in await libraries(queue, library):
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


async def faces(queue: Queue, path: Path, library: str | None = None) -> dict[str, Any]:
    library, relative = await locate(queue, path, library)
    image = await queue.image(library, relative)
    rows = await queue.faces(image["id"]) if image["state"] == ImageState.DONE else []
    if image["kind"] == "video":
        return await _video_faces(queue, library, relative, image, rows)
    people = await image_people(queue, image["id"]) if rows else {}
    return {
        "path": str(Path(library) / relative) if library.startswith("/") else relative,
        "library": library,
        "state": image["state"],
        "model": image["model"],
        "scale": image["scale"],
        "width": image["original_width"] or image["width"],
        "height": image["original_height"] or image["height"],
        "faces": [
            _face(r, people.get((r["box_top"], r["box_right"], r["box_bottom"], r["box_left"])))
            for r in rows
        ],
    }


def _face(row: Any, person: dict[str, Any] | None) -> dict[str, Any]:
    """A face row as `facescan faces --json` shows it, with its person (or nobody)."""
    return {
        "top": row["box_top"],
        "right": row["box_right"],
        "bottom": row["box_bottom"],
        "left": row["box_left"],
        "score": row["score"],
        "model": row["model"],
        "scale": row["scale"],
        **(person or NOBODY),
    }


async def _video_faces(
    queue: Queue, library: str, relative: str, video: Any, rows: list[Any]
) -> dict[str, Any]:
    """A video's faces by sampled frame (timestamp), each with its track: the faces of
    one track are one person across the video's frames."""
    try:  # by face id: a video's frames often hold one box more than once
        held = await faces_of_image(PeopleDb(queue), video["id"]) if rows else []
    except PermissionDenied:  # a role granted libraries only reads no people
        held = []
    people = {
        r["face_id"]: {"person": r["person"], "distance": r["distance"], "status": r["status"]}
        for r in held
    }
    faces = [
        {"face_id": r["id"], "frame_ms": r["frame_ms"], "track": r["track"]}
        | _face(r, people.get(r["id"]))
        for r in sorted(rows, key=lambda r: (r["frame_ms"] or 0, r["box_left"], r["id"]))
    ]
    stamps = video["frames"] or sorted({f["frame_ms"] for f in faces})
    return {
        "path": str(Path(library) / relative) if library.startswith("/") else relative,
        "library": library,
        "kind": "video",
        "state": video["state"],
        "model": video["model"],
        "scale": video["scale"],
        "width": video["original_width"] or video["width"],
        "height": video["original_height"] or video["height"],
        "duration_ms": video["duration_ms"],
        "tracks": len({f["track"] for f in faces}),
        "frames": [
            {"timestamp_ms": t, "faces": [f for f in faces if f["frame_ms"] == t]} for t in stamps
        ],
        "faces": faces,
    }


def faces_text(result: dict[str, Any]) -> str:
    head = f"{result['path']}: {result['state']}"
    if result["state"] != ImageState.DONE:
        return head + " (no result yet; see `facescan failures`)"
    if result.get("kind") == "video":
        return _video_text(head, result)
    n = len(result["faces"])
    lines = [
        f"{head}, {n} face{'s' if n != 1 else ''} ({result['model']}@{result['scale']:g}, "
        f"{result['width']}x{result['height']})"
    ]
    lines += [f"  {_face_line(f)}" for f in result["faces"]]
    return "\n".join(lines)


def _face_line(f: dict[str, Any]) -> str:
    return (
        f"top {f['top']} right {f['right']} bottom {f['bottom']} left {f['left']} "
        f"score {f['score']:.2f}" + (f" {f['person']} ({f['status']})" if f.get("person") else "")
    )


def _video_text(head: str, result: dict[str, Any]) -> str:
    n, frames = len(result["faces"]), len(result["frames"])
    duration = result["duration_ms"]
    lines = [
        f"{head}, video of {duration / 1000:.1f} s" if duration is not None else f"{head}, video",
        f"  {plural(n, 'face')} in {plural(frames, 'frame')}, {plural(result['tracks'], 'track')}"
        f" ({result['model']}@{result['scale']:g}, {result['width']}x{result['height']})",
    ]
    for frame in result["frames"]:
        lines.append(
            f"  at {frame['timestamp_ms'] / 1000:.3f} s: {plural(len(frame['faces']), 'face')}"
        )
        lines += [f"    track {f['track']}: {_face_line(f)}" for f in frame["faces"]]
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
                for name in await libraries(queue, library)
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
        name, relative = await locate(queue, path, library)
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
                for name in await libraries(queue, library)
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
