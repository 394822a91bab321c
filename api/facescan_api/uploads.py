"""Reference photos uploaded to POST /people: detected by the API's worker pool, then
kept as images of the person's library, and the face of each that is the person.

Called by ``facescan_api.people_routes``. How an upload is kept (the people's tables
need a face row, and a face belongs to an image of a library): the photo becomes an
image of the person's library at the reserved path ``.facescan/uploads/<sha256 of its
bytes>``, done, with a detection row (worker ``api-upload``, the pool's model and scale)
and every face the pool found, with its embedding, written in one transaction. It is
then a photo of the library like any other: `people add` takes its faces, matching and
clustering see them, `facescan faces` and `people show` list it. The bytes are not
written anywhere: a library's root is not the server's to write into. The same photo
uploaded again is the same image (its faces are reused, not detected twice). A scan that
walks the library root does not find the file and marks the image missing, which keeps
its faces; scans skip hidden directories, so nothing else is ever registered there.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from facescan_api.guard import Problem
from facescan_api.people_sql import query, translated
from facescan_api.pool import Busy, DetectorPool, UploadTimeout, WorkerLost
from facescan_api.work import Detected
from facescan_queue.defaults import RESERVED_PREFIX
from facescan_queue.repository import Queue

UPLOADS = RESERVED_PREFIX + "uploads/"
"""Where uploaded photos are kept in a library (a hidden directory: scans skip it)."""
EMBEDDINGS = {"hog": "dlib", "cnn": "dlib", "insightface": "arcface"}
"""The embedding model of each detection model."""


@dataclass(frozen=True)
class StoredFace:
    face_id: int
    box: tuple[int, int, int, int]
    """top, right, bottom, left in original pixels."""


@dataclass(frozen=True)
class StoredPhoto:
    """An uploaded photo as an image of the library, with its faces in `facescan faces`
    order (left to right: the numbers ``face`` takes, from 1)."""

    image_id: int
    path: str
    faces: tuple[StoredFace, ...]
    made: bool
    """Made by this request (False: the same photo was uploaded before)."""


async def library_embedding(queue: Queue, library: str) -> str:
    """The embedding model of the library's faces (its first cascade model's); 404 when
    there is no such library."""
    with translated(queue):
        model = await queue.pool.fetchval(query("library_model"), library)
    if model is None:
        raise Problem(404, "not_found", f"no library {library!r}")
    return EMBEDDINGS[str(model)]


async def detect(
    pool: DetectorPool, data: bytes, name: str = "", on_busy: Callable[[], None] = lambda: None
) -> tuple[Detected, int]:
    """The faces the pool finds in one upload and the milliseconds it took; the pool's
    refusals as the typed errors /detect answers (``name`` says which upload; ``on_busy``
    hears of each upload refused because the pool is full). Used by /detect, /people and
    Immich's /predict."""
    started = time.monotonic()
    which = f"{name}: " if name else ""
    try:
        outcome = await pool.detect(data)
    except Busy as exc:
        on_busy()
        raise Problem(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from exc
    except UploadTimeout as exc:
        raise Problem(422, "image_timeout", f"{which}{exc}") from exc
    except WorkerLost as exc:
        retry = {"Retry-After": str(pool.retry_after())}
        raise Problem(503, "worker_lost", f"{which}{exc}", retry) from exc
    if not isinstance(outcome, Detected):
        raise Problem(outcome.status, outcome.error, f"{which}{outcome.detail}")
    return outcome, round((time.monotonic() - started) * 1000)


def upload_path(data: bytes) -> str:
    return UPLOADS + hashlib.sha256(data).hexdigest()


async def store(
    queue: Queue, library: str, data: bytes, found: Detected, max_dimension: int, ms: int
) -> StoredPhoto:
    """The upload as an image of ``library`` with its faces (see the module docstring)."""
    path = upload_path(data)
    faces = sorted(found.faces, key=lambda f: (f.left, f.top))
    with translated(queue):
        async with queue.pool.acquire() as conn, conn.transaction():
            image = await conn.fetchval(
                query("upload_image"),
                library,
                path,
                found.width,
                found.height,
                len(data),
                len(faces),
            )
            made = image is not None
            if made:
                await conn.execute(
                    query("upload_detection"),
                    image,
                    found.model,
                    found.scale,
                    max_dimension,
                    len(faces),
                    found.width,
                    found.height,
                    found.degraded,
                    ms,
                )
                await conn.execute(
                    query("upload_faces"),
                    image,
                    found.model,
                    found.embedding_model,
                    [f.top for f in faces],
                    [f.right for f in faces],
                    [f.bottom for f in faces],
                    [f.left for f in faces],
                    [f.score for f in faces],
                    ["{" + ",".join(f"{v}" for p in f.landmarks for v in p) + "}" for f in faces],
                    ["[" + ",".join(f"{v}" for v in f.embedding) + "]" for f in faces],
                )
            else:
                row = await conn.fetchrow(query("image_at"), library, path)
                if row is None or row["state"] != "done":
                    raise Problem(
                        409,
                        "not_detected",
                        f"{path} of library {library} is being detected or removed: retry later",
                    )
                image = row["id"]
            rows = await conn.fetch(query("image_faces"), image)
    return StoredPhoto(
        int(image),
        path,
        tuple(
            StoredFace(r["face_id"], (r["box_top"], r["box_right"], r["box_bottom"], r["box_left"]))
            for r in rows
        ),
        made=made,
    )


async def drop(queue: Queue, library: str, photos: Sequence[StoredPhoto]) -> None:
    """Takes back the photos this request made (the person they were for was refused)."""
    made = [p.image_id for p in photos if p.made]
    if made:
        with translated(queue):
            await queue.pool.execute(query("drop_uploads"), made, library)
