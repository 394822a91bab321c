"""Helpers of the people's integration tests: the real dlib faces of the sample photos,
images committed through the queue as a detector commits them, synthetic libraries of
dlib-like embeddings written straight into the tables, and reads of the truth."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import numpy as np

from facescan_people.enrol import Reference
from facescan_queue.models import DetectionResult, FaceResult, NewImage
from facescan_queue.repository import Queue

if TYPE_CHECKING:
    from facescan_detector.backends.base import FaceDetector

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples"
LIB = "photos"
"""The library the root conftest's ``queue`` fixture makes."""


@cache
def sample_faces(name: str) -> tuple[FaceResult, ...]:
    """The faces HOG (upsample 1, long side 1280) finds in a sample photo, with their real
    dlib embeddings, in original pixels: what the detector commits for it."""
    from facescan_detector.backends.base import scale_face
    from facescan_detector.loading import load_image

    detector = _hog()
    loaded = load_image(SAMPLES, name, max_dimension=1280)
    faces = []
    for face in detector.detect(loaded.pixels):
        f = scale_face(face, loaded.scale, loaded.original_width, loaded.original_height)
        faces.append(
            FaceResult(
                top=round(f.top),
                right=round(f.right),
                bottom=round(f.bottom),
                left=round(f.left),
                score=float(f.score),
                landmarks=tuple(float(v) for point in f.landmarks for v in point),
                embedding=tuple(float(v) for v in f.embedding),
            )
        )
    return tuple(faces)


@cache
def _hog() -> FaceDetector:
    from facescan_detector.backends import create_detector

    return create_detector("hog", upsample=1)


async def commit_images(
    queue: Queue, images: Mapping[str, Sequence[FaceResult]], library: str = LIB
) -> dict[str, int]:
    """Registers the images and commits their faces as a detector does (claim, start,
    complete); returns their ids by path."""
    paths = list(images)
    await queue.register(library, [NewImage(p, 1000, 1000) for p in paths])
    owner = f"test-{uuid.uuid4().hex[:8]}"
    await queue.claim(library, owner, step=0, size_class=0, limit=len(paths), lease_seconds=300)
    ids = {}
    while (started := await queue.start_next(owner)) is not None:
        result = DetectionResult(
            faces=tuple(images[started.path]),
            max_dimension=1280,
            duration_ms=1,
            original_width=1000,
            original_height=1000,
        )
        await queue.complete(started.image_id, owner, result)
        ids[started.path] = started.image_id
    assert set(ids) == set(paths)
    return ids


async def face_ids(db: asyncpg.Connection, path: str) -> list[int]:
    """The face ids of an image, in `facescan faces` order (its --face numbers)."""
    rows = await db.fetch(
        "SELECT f.id FROM facescan.faces f JOIN facescan.images i ON i.id = f.image_id "
        "WHERE i.path = $1 ORDER BY f.box_left, f.box_top, f.id",
        path,
    )
    return [r[0] for r in rows]


async def reference(db: asyncpg.Connection, path: str, n: int = 1) -> Reference:
    """Face ``n`` (from 1) of an image as a reference face."""
    face = (await face_ids(db, path))[n - 1]
    image = await db.fetchval("SELECT image_id FROM facescan.faces WHERE id = $1", face)
    return Reference(face, image, path)


async def who(db: asyncpg.Connection) -> dict[str, list[tuple[str | None, str | None, str | None]]]:
    """Every face by image path (left to right): (person, status, source); None for a face
    matching has not considered or that is nobody's."""
    rows = await db.fetch(
        "SELECT i.path, p.name, fp.status::text, fp.source::text FROM facescan.faces f "
        "JOIN facescan.images i ON i.id = f.image_id "
        "LEFT JOIN facescan.face_people fp ON fp.face_id = f.id "
        "LEFT JOIN facescan.people p ON p.id = fp.person_id "
        "ORDER BY i.path, f.box_left, f.box_top, f.id"
    )
    result: dict[str, list[tuple[str | None, str | None, str | None]]] = {}
    for r in rows:
        result.setdefault(r[0], []).append((r[1], r[2], r[3]))
    return result


def dlib_like(seed: int, people: int, faces_each: int, strangers: int) -> dict[str, np.ndarray]:
    """Synthetic 128-d embeddings shaped like dlib's distances: two faces of one person
    about 0.3 apart (tagged under 0.5), two people about 0.9 apart (beyond 0.6). Returns
    {"centres": people x 128, "faces": (people * faces_each) x 128 in person order, then
    ``strangers`` faces of people seen once}."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.9 / np.sqrt(2 * 128), (people, 128))
    noise = 0.3 / np.sqrt(2 * 128)
    faces = np.repeat(centres, faces_each, axis=0)
    faces += rng.normal(0, noise, faces.shape)
    others = rng.normal(0, 0.9 / np.sqrt(2 * 128), (strangers, 128))
    return {"centres": centres, "faces": np.vstack([faces, others])}


def vector_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


async def insert_faces(
    db: asyncpg.Connection, embeddings: np.ndarray, prefix: str, library: str = LIB
) -> list[int]:
    """One done image per embedding (its one face), written straight into the tables as
    a detector's commit leaves them; returns the face ids in order."""
    paths = [f"{prefix}/{i:06d}.jpg" for i in range(len(embeddings))]
    images = await db.fetch(
        "INSERT INTO facescan.images (library, path, width, height, size_class, state, "
        "face_count) SELECT $1, p, 1000, 1000, 0, 'done', 1 FROM unnest($2::text[]) "
        "WITH ORDINALITY AS t(p, n) ORDER BY n RETURNING id",
        library,
        paths,
    )
    rows = await db.fetch(
        "INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left, "
        "model, embedding_dlib) SELECT i, 10, 60, 70, 10, 'hog', e::vector "
        "FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(i, e, n) ORDER BY n "
        "RETURNING id",
        [r[0] for r in images],
        [vector_text(v) for v in embeddings],
    )
    return [r[0] for r in rows]
