"""Helpers of the clustering tests: a synthetic library (facescan_people.synthetic, faces
grouped in photos as the generator made them) written straight into the tables, and who
has each face now."""

from __future__ import annotations

import asyncpg
import numpy as np

from facescan_people import quality, synthetic
from tests.integration.people.support import LIB, vector_text

COLUMN = {"dlib": ("hog", "embedding_dlib"), "arcface": ("insightface", "embedding_arcface")}


async def insert_dataset(
    db: asyncpg.Connection,
    ds: synthetic.Dataset,
    prefix: str,
    kind: str = "dlib",
    library: str = LIB,
) -> list[int]:
    """One done image per synthetic photo, its faces in it; the face ids in dataset order."""
    photos = sorted({int(i) for i in ds.images})
    image_ids = await db.fetch(
        "INSERT INTO facescan.images (library, path, width, height, size_class, state, "
        "face_count) SELECT $1, p, 1000, 1000, 0, 'done', 1 FROM unnest($2::text[]) "
        "WITH ORDINALITY AS t(p, n) ORDER BY n RETURNING id",
        library,
        [f"{prefix}/{p:06d}.jpg" for p in photos],
    )
    by_photo = {p: r[0] for p, r in zip(photos, image_ids, strict=True)}
    model, column = COLUMN[kind]
    rows = await db.fetch(
        "INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left, "
        f"model, {column}) SELECT i, 10, 60 + n, 70, 10 + n, $3, e::vector "
        "FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(i, e, n) ORDER BY n "
        "RETURNING id",
        [by_photo[int(i)] for i in ds.images],
        [vector_text(v) for v in ds.embeddings],
        model,
    )
    await db.execute("ANALYZE")
    return [r[0] for r in rows]


async def holders(db: asyncpg.Connection, faces: list[int]) -> list[int | None]:
    """Each face's person (None: nobody's), in the order given."""
    rows = dict(
        await db.fetch(
            "SELECT face_id, person_id FROM facescan.face_people WHERE face_id = ANY($1)", faces
        )
    )
    return [rows.get(f) for f in faces]


def truth(ds: synthetic.Dataset) -> list[int | None]:
    """The true identities, noise faces as singletons (None)."""
    return [None if n else int(i) for i, n in zip(ds.identities, ds.noise, strict=True)]


def scores(ds: synthetic.Dataset, labels: list[int | None]) -> quality.Scores:
    return quality.pairwise(labels, truth(ds))


async def assert_well_formed(db: asyncpg.Connection, min_faces: int = 3) -> None:
    """Every unnamed person has at least ``min_faces`` faces, a featured face of theirs,
    and faces of one model; no person has two faces of one photo."""
    bad = await db.fetch(
        "SELECT p.id, count(fp.face_id) AS n, "
        "bool_or(fp.face_id = p.featured_face) AS featured, "
        "count(DISTINCT f.model = 'insightface') AS models "
        "FROM facescan.people p LEFT JOIN facescan.face_people fp ON fp.person_id = p.id "
        "LEFT JOIN facescan.faces f ON f.id = fp.face_id WHERE p.name IS NULL "
        "GROUP BY p.id HAVING count(fp.face_id) < $1 OR NOT coalesce(bool_or(fp.face_id = "
        "p.featured_face), false) OR count(DISTINCT f.model = 'insightface') > 1",
        min_faces,
    )
    assert not bad, [dict(r) for r in bad]
    twice = await db.fetchval(
        "SELECT count(*) FROM (SELECT person_id, image_id FROM facescan.face_people "
        "WHERE person_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) t"
    )
    assert twice == 0


def small(seed: int = 0, shape: synthetic.ModelShape = synthetic.DLIB) -> synthetic.Dataset:
    """~300 faces of 20 people, a few look-alike pairs and loners."""
    return synthetic.generate(
        300, 20, shape, noise_share=0.05, lookalike_pairs=3, min_faces_per_identity=6, seed=seed
    )


def ids_of(faces: list[int], labels: list[int | None], person: int) -> list[int]:
    return [f for f, label in zip(faces, labels, strict=True) if label == person]


def centre_distance(ds: synthetic.Dataset, a: int, b: int) -> float:
    ca = ds.embeddings[ds.identities == a].mean(0)
    cb = ds.embeddings[ds.identities == b].mean(0)
    return float(np.linalg.norm(ca - cb))
