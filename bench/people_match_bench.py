"""People matching benchmark: nearest faces and incremental assignment at 1,000,000 faces.

Prints, measured in this one run on this machine:
  - the load: N ArcFace-shaped faces (512-d, unit norm, clustered by identity as
    ``facescan_people.synthetic`` models them) of one library, copied in (binary COPY)
    with the ArcFace HNSW index dropped, then the index built again from its own
    definition (schema.sql's), timed apart;
  - matching: query faces (new faces of known identities, not in the table), each the
    k=10 nearest-faces query of `people add` (the ArcFace branch of queries.sql's
    nearest_faces, the embedding bound instead of looked up by face id) in the session
    settings of ``facescan_people.repository`` (iterative scan, max_scan_tuples; ef_search
    as the server has it): p50 and p95 per query (goal p95 <= 30 ms), recall@10 against an
    exact search (numpy, checked against PostgreSQL with the index off on a few queries;
    goal >= 0.95); the same at larger ef_search, for comparison;
  - incremental assignment: new faces (new photos of known identities and of bystanders)
    inserted into the library (index maintained), then ``facescan_people.sync.sync_library``
    over them, twice on the same faces (their matches deleted in between): connected as
    `people sync` connects, then with plan_cache_mode = force_custom_plan (asyncpg
    prepares nearest_references once per connection, and from its sixth execution
    PostgreSQL may pick a generic plan, blind to LIMIT $3 and the library, that compares
    each face with every reference face); each: time, faces per second, statements per
    batch, HNSW index scans per face (pg_stat_user_indexes), how the faces were assigned
    against the truth. Every table is analyzed after the load, as autovacuum would have.

``synthetic.generate`` places faces in photos one photo at a time over every identity
(quadratic) and holds several float64 copies of the matrix: at 1,000,000 faces it would
not fit in this machine's memory. The faces here follow its model with its shape
(``synthetic.ARCFACE``), built a chunk at a time in float32, in photos cut from a shuffled
list (faces of one person in one photo are kept out of the reference faces).

Usage: python bench/people_match_bench.py [--faces 1000000] [--queries 1000]
       [--new-faces 10000] [--seed 0] [--dsn DSN] [--keep] [--quick]
Without --dsn it starts an embedded PostgreSQL (shared_buffers raised, then restarted) in a
temporary directory, or with --keep in --data-dir, kept, whose loaded library a later
run with the same figures reuses. With --dsn the library is deleted at the end unless
--keep.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import re
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

from facescan_people import synthetic
from facescan_people.models import SyncReport
from facescan_people.queries import query
from facescan_people.repository import MAX_SCAN_TUPLES, PeopleDb
from facescan_people.sync import BATCH_SIZE, NEIGHBOURS, sync_library
from facescan_queue.errors import QueueError
from facescan_queue.migrate import migrate
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

SHAPE = synthetic.ARCFACE
K = 10
GOAL_P95_MS, GOAL_RECALL = 30.0, 0.95
EF_SEARCH_MORE = (80, 160)  # compared with the server's ef_search (pgvector's default: 40)
FACES_PER_IDENTITY = 50
NAMED_SHARE = 20  # one identity in 20, the largest, is a named person
NOISE_SHARE = 0.05
CHUNK = 20_000
INDEX = "faces_embedding_arcface"
MODEL = b"insightface"
WIDTH, HEIGHT, SIZE_CLASS = 4032, 3024, 2

# The k nearest faces of one embedding: queries.sql's nearest_faces, ArcFace branch, with
# the embedding bound ($1) instead of read from the face's row.
NEAREST_SQL = """
WITH near AS MATERIALIZED (
    SELECT f.id, f.image_id, 'arcface' AS kind,
           (f.embedding_arcface <=> $1::vector)::real AS distance
    FROM facescan.faces f
    ORDER BY f.embedding_arcface <=> $1::vector
    LIMIT $2
)
SELECT n.id AS face_id, n.image_id, n.kind, n.distance, i.library,
       fp.face_id IS NOT NULL AS considered, fp.person_id, fp.source::text AS source,
       fp.status::text AS status, fp.distance AS held_distance
FROM near n
JOIN facescan.images i ON i.id = n.image_id
LEFT JOIN facescan.face_people fp ON fp.face_id = n.id
ORDER BY n.distance, n.id
"""


# --- synthetic faces (synthetic.generate's model, a chunk at a time) -------------------


@dataclass(frozen=True)
class Faces:
    """Faces in photo order: embedding, true identity and photo (0-based) of each."""

    embeddings: FloatArray
    owners: IntArray
    photos: IntArray


@dataclass(frozen=True)
class World:
    """The identities' centres and the nuisance directions every face shares."""

    centres: FloatArray
    nuisance: FloatArray
    identities: int
    """Identities 0..identities-1 are people; the ids after them are bystanders."""


def _world(rng: np.random.Generator, identities: int, bystanders: int) -> World:
    dim, total = SHAPE.dim, identities + bystanders
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.arange(1, dim + 1, dtype=np.float64) ** -0.5
    scales *= SHAPE.identity / np.sqrt((scales**2).sum())
    offsets = (rng.standard_normal((total, dim)) * scales) @ rotation.T
    rho = SHAPE.lookalike_correlation
    for a in range(min(identities // 10, identities // 2)):  # look-alike pairs
        b = identities - 1 - a
        offsets[b] = rho * offsets[a] + np.sqrt(1 - rho**2) * offsets[b]
    common = rng.standard_normal(dim)
    centres = common / np.linalg.norm(common) * SHAPE.common + offsets
    nuisance = np.linalg.qr(rng.standard_normal((dim, synthetic.NUISANCE_RANK)))[0].T
    return World(centres.astype(np.float32), nuisance.astype(np.float32), identities)


def _embed(rng: np.random.Generator, world: World, owners: IntArray) -> FloatArray:
    dim, rank = SHAPE.dim, synthetic.NUISANCE_RANK
    out = np.empty((len(owners), dim), np.float32)
    quality = rng.lognormal(0.0, SHAPE.face_quality_sigma, len(owners)).astype(np.float32)
    for start in range(0, len(owners), CHUNK):
        part = slice(start, start + CHUNK)
        n = len(owners[part])
        iso = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        low = rng.standard_normal((n, rank), dtype=np.float32) @ world.nuisance
        noise = (iso + low / np.float32(np.sqrt(rank))) / np.float32(np.sqrt(2.0))
        vectors = world.centres[owners[part]] + noise * (SHAPE.face * quality[part])[:, None]
        out[part] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return out


def _in_photos(rng: np.random.Generator, owners: IntArray, world: World) -> Faces:
    """The faces shuffled, cut into photos of synthetic.PHOTO_SIZES faces, embedded."""
    owners = rng.permutation(owners)
    sizes = rng.choice(synthetic.PHOTO_SIZES, len(owners), p=synthetic.PHOTO_SHARES)
    photos = np.repeat(np.arange(len(sizes)), sizes)[: len(owners)]
    return Faces(_embed(rng, world, owners), owners, photos.astype(np.int64))


def _library(n: int, identities: int, new_bystanders: int, seed: int) -> tuple[World, Faces]:
    rng = np.random.default_rng(seed)
    n_noise = round(n * NOISE_SHARE)
    sizes = synthetic._sizes(rng, n - n_noise, identities, 4)
    world = _world(rng, identities, n_noise + new_bystanders)
    owners = np.concatenate(
        [np.repeat(np.arange(identities), sizes), identities + np.arange(n_noise)]
    )
    return world, _in_photos(rng, owners.astype(np.int64), world)


def _known(rng: np.random.Generator, library: Faces, world: World, count: int) -> IntArray:
    """Identities of ``count`` new faces of known people, as often as the library has them."""
    people = library.owners[library.owners < world.identities]
    return np.asarray(rng.choice(people, count), np.int64)


# --- loading -------------------------------------------------------------------------


def _copy_header() -> bytes:
    return b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


_FACE_ROW = np.dtype(
    [("fields", ">i2")]
    + [
        item
        for name, kind in (
            ("id", ">i8"),
            ("image_id", ">i8"),
            ("top", ">i4"),
            ("right", ">i4"),
            ("bottom", ">i4"),
            ("left", ">i4"),
            ("score", ">f4"),
            ("model", f"S{len(MODEL)}"),
        )
        for item in ((f"{name}_len", ">i4"), (name, kind))
    ]
    + [("vector_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vector", ">f4", (SHAPE.dim,))]
)
IMAGE_COLUMNS = (
    *("id", "library", "path", "width", "height", "file_bytes", "size_class"),
    *("state", "face_count"),
)
DETECTION_COLUMNS = (
    *("image_id", "model", "scale", "max_dimension", "step", "face_count"),
    *("original_width", "original_height", "degraded", "duration_ms", "worker"),
)
_FACE_COLUMNS = (
    "id",
    "image_id",
    "box_top",
    "box_right",
    "box_bottom",
    "box_left",
    "score",
    "model",
    "embedding_arcface",
)


async def _face_rows(ids: IntArray, images: IntArray, faces: Faces) -> AsyncIterator[bytes]:
    """The faces as a binary COPY stream, built by numpy a chunk at a time."""
    yield _copy_header()
    starts = np.flatnonzero(np.r_[True, faces.photos[1:] != faces.photos[:-1]])
    # each face's place in its photo
    slot = np.arange(len(images)) - np.repeat(starts, np.diff(np.r_[starts, len(images)]))
    for start in range(0, len(ids), CHUNK):
        part = slice(start, start + CHUNK)
        rows = np.zeros(len(ids[part]), _FACE_ROW)
        rows["fields"] = len(_FACE_COLUMNS)
        for name in ("id", "image_id"):
            rows[f"{name}_len"] = 8
        for name in ("top", "right", "bottom", "left", "score"):
            rows[f"{name}_len"] = 4
        rows["id"], rows["image_id"] = ids[part], images[part]
        left = 200 + 500 * slot[part]
        rows["top"], rows["bottom"], rows["left"], rows["right"] = 600, 900, left, left + 300
        rows["score"] = 0.9
        rows["model_len"], rows["model"] = len(MODEL), MODEL
        rows["vector_len"], rows["dim"] = 4 + 4 * SHAPE.dim, SHAPE.dim
        rows["vector"] = faces.embeddings[part]
        yield rows.tobytes()
        await asyncio.sleep(0)
    yield struct.pack(">h", -1)


async def _insert_faces(
    conn: asyncpg.Connection[asyncpg.Record], library: str, faces: Faces, prefix: str
) -> tuple[IntArray, IntArray, dict[str, float]]:
    """Images (done), detections and faces of ``faces``; their face and image ids."""
    times: dict[str, float] = {}
    base_image = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM facescan.images"))
    base_face = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM facescan.faces"))
    per_photo = np.bincount(faces.photos)
    image_ids = base_image + 1 + np.arange(len(per_photo), dtype=np.int64)
    face_ids = base_face + 1 + np.arange(len(faces.owners), dtype=np.int64)
    t = time.perf_counter()
    await conn.copy_records_to_table(
        "images",
        schema_name="facescan",
        columns=IMAGE_COLUMNS,
        records=(
            (i, library, f"{prefix}/{i:08d}.jpg", WIDTH, HEIGHT, 2_500_000, SIZE_CLASS, "done", c)
            for i, c in zip(image_ids.tolist(), per_photo.tolist(), strict=True)
        ),
    )
    await conn.copy_records_to_table(
        "detections",
        schema_name="facescan",
        columns=DETECTION_COLUMNS,
        records=(
            (i, "insightface", 1.0, 1280, 0, c, WIDTH, HEIGHT, False, 100, "bench")
            for i, c in zip(image_ids.tolist(), per_photo.tolist(), strict=True)
        ),
    )
    times["images + detections"] = time.perf_counter() - t
    t = time.perf_counter()
    await conn.copy_to_table(
        "faces",
        schema_name="facescan",
        columns=_FACE_COLUMNS,
        format="binary",
        source=_face_rows(face_ids, image_ids[faces.photos], faces),
    )
    times["faces"] = time.perf_counter() - t
    for table in ("images", "faces"):
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('facescan.{table}', 'id'), "
            f"(SELECT max(id) FROM facescan.{table}))"
        )
    return face_ids, image_ids, times


@dataclass(frozen=True)
class Loaded:
    face_ids: IntArray
    image_ids: IntArray
    person_of: dict[int, int]
    """Named identity -> person id."""
    references: int
    reused: bool


async def _load(
    conn: asyncpg.Connection[asyncpg.Record],
    library: str,
    faces: Faces,
    named: IntArray,
) -> Loaded:
    existing = await conn.fetchval(
        "SELECT count(*) FROM facescan.faces f JOIN facescan.images i ON i.id = f.image_id "
        "WHERE i.library = $1 AND i.path LIKE 'lib/%'",
        library,
    )
    if existing == len(faces.owners):
        t = time.perf_counter()
        gone = await conn.execute(
            "DELETE FROM facescan.images WHERE library = $1 AND path LIKE 'new/%'", library
        )
        print(
            f"load: reused library {library} ({existing:,} faces); the last run's new photos "
            f"deleted ({gone}) in {time.perf_counter() - t:.1f} s (their index entries stay "
            "until a VACUUM)"
        )
        rows = await conn.fetch(
            "SELECT min(f.id) AS face, min(i.id) AS image FROM facescan.faces f "
            "JOIN facescan.images i ON i.id = f.image_id WHERE i.library = $1",
            library,
        )
        face0, image0 = int(rows[0]["face"]), int(rows[0]["image"])
        people = await conn.fetch(
            "SELECT id, name FROM facescan.people WHERE library = $1", library
        )
        refs = await conn.fetchval(
            "SELECT count(*) FROM facescan.face_people fp JOIN facescan.people p "
            "ON p.id = fp.person_id WHERE p.library = $1 AND fp.status = 'matched'",
            library,
        )
        return Loaded(
            face0 + np.arange(len(faces.owners), dtype=np.int64),
            image0 + np.arange(int(faces.photos[-1]) + 1, dtype=np.int64),
            {int(r["name"].split("-")[1]): int(r["id"]) for r in people},
            int(refs),
            True,
        )
    if existing:
        raise SystemExit(f"library {library} holds {existing} faces, not {len(faces.owners)}")
    await conn.execute(
        "INSERT INTO facescan.libraries (name, cascade_models, cascade_scales) "
        "VALUES ($1, '{insightface}', '{1.0}')",
        library,
    )
    definition = await conn.fetchval("SELECT pg_get_indexdef(to_regclass($1))", f"facescan.{INDEX}")
    await conn.execute(f"DROP INDEX facescan.{INDEX}")
    t0 = time.perf_counter()
    face_ids, image_ids, times = await _insert_faces(conn, library, faces, "lib")
    t = time.perf_counter()
    # the named people, each with all their faces as references (as if the user had
    # confirmed every one: source user, matched); every other face considered, nobody's
    person_rows = await conn.fetch(
        "INSERT INTO facescan.people (library, name, featured_face) "
        "SELECT $1, 'person-' || p, f FROM unnest($2::bigint[], $3::bigint[]) AS u(p, f) "
        "RETURNING id, name",
        library,
        [int(p) for p in named],
        [int(face_ids[np.flatnonzero(faces.owners == p)[0]]) for p in named],
    )
    person_of = {int(r["name"].split("-")[1]): int(r["id"]) for r in person_rows}
    person = np.zeros(len(faces.owners), np.int64)  # 0: nobody
    for identity, pid in person_of.items():
        person[faces.owners == identity] = pid
    image_of = image_ids[faces.photos]
    # a person never has two faces of one photo: the later ones stay nobody's
    keys = np.stack([person, image_of], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    keep = np.zeros(len(person), bool)
    keep[first] = True
    person[~keep] = 0
    await conn.copy_records_to_table(
        "face_people",
        schema_name="facescan",
        columns=("face_id", "image_id", "person_id", "source", "status"),
        records=(
            (f, i, p, "user", "matched") if p else (f, i, None, None, None)
            for f, i, p in zip(face_ids.tolist(), image_of.tolist(), person.tolist(), strict=True)
        ),
    )
    times["people + face_people"] = time.perf_counter() - t
    load_s = time.perf_counter() - t0
    t = time.perf_counter()
    await conn.execute(definition)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    await conn.execute(
        "ANALYZE facescan.images, facescan.faces, facescan.face_people, facescan.people"
    )
    times["analyze"] = time.perf_counter() - t
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    print(
        f"load: {len(face_ids):,} faces in {len(image_ids):,} photos in {load_s:.1f} s "
        f"({len(face_ids) / load_s:,.0f} faces/s; {parts}), the HNSW index dropped"
    )
    print(f"index build: {build_s:.1f} s ({definition})")
    return Loaded(face_ids, image_ids, person_of, int((person > 0).sum()), False)


# --- matching ------------------------------------------------------------------------


def _encode_vector(v: Any) -> bytes:
    a = np.asarray(v, dtype=">f4")
    return struct.pack(">hh", len(a), 0) + a.tobytes()


def _decode_vector(b: bytes) -> FloatArray:
    return np.frombuffer(b[4:], ">f4").astype(np.float32)


async def _vector_codec(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    schema = await conn.fetchval(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
    )
    await conn.set_type_codec(
        "vector", schema=schema, encoder=_encode_vector, decoder=_decode_vector, format="binary"
    )


def _exact(library: FloatArray, queries: FloatArray) -> IntArray:
    """The K nearest library rows of each query by cosine distance (unit vectors)."""
    out = np.empty((len(queries), K), np.int64)
    for start in range(0, len(queries), 50):
        sims = queries[start : start + 50] @ library.T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 50] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass(frozen=True)
class Timed:
    ef_search: int
    p50_ms: float
    p95_ms: float
    recall: float


async def _match(
    conn: asyncpg.Connection[asyncpg.Record],
    queries: FloatArray,
    truth: IntArray,
    face_ids: IntArray,
    ef_search: int | None,
) -> Timed:
    """Each query in matching's session settings (search_settings), timed one by one."""
    times, hits = [], 0
    async with conn.transaction():
        await conn.fetch(query("search_settings"), MAX_SCAN_TUPLES)
        if ef_search is not None:
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        ef = int(await conn.fetchval("SELECT current_setting('hnsw.ef_search')"))
        stmt = await conn.prepare(NEAREST_SQL)
        for q, want in zip(queries, truth, strict=True):
            t = time.perf_counter()
            rows = await stmt.fetch(q, K)
            times.append((time.perf_counter() - t) * 1000)
            hits += len({r["face_id"] for r in rows} & set(face_ids[want].tolist()))
    pct = statistics.quantiles(times, n=100, method="inclusive")
    return Timed(ef, statistics.median(times), pct[94], hits / (K * len(queries)))


async def _plan(conn: asyncpg.Connection[asyncpg.Record], q: FloatArray) -> str:
    async with conn.transaction():
        await conn.fetch(query("search_settings"), MAX_SCAN_TUPLES)
        rows = await conn.fetch("EXPLAIN " + NEAREST_SQL, q, K)
    return "\n".join(r[0] for r in rows)


async def _exact_in_postgres(conn: asyncpg.Connection[asyncpg.Record], q: FloatArray) -> list[int]:
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        rows = await conn.fetch(NEAREST_SQL, q, K)
    return [int(r["face_id"]) for r in rows]


# --- incremental assignment ----------------------------------------------------------


async def _index_stats(conn: asyncpg.Connection[asyncpg.Record]) -> tuple[int, int]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes "
        "WHERE schemaname = 'facescan' AND indexrelname = $1",
        INDEX,
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def _references_plan(
    conn: asyncpg.Connection[asyncpg.Record], library: str, faces: IntArray
) -> str:
    """The plan of sync's nearest_references for one batch, in matching's settings."""
    async with conn.transaction():
        await conn.fetch(query("search_settings"), MAX_SCAN_TUPLES)
        rows = await conn.fetch(
            "EXPLAIN " + query("nearest_references"), faces.tolist(), library, NEIGHBOURS
        )
    return "\n".join(r[0] for r in rows)


@dataclass(frozen=True)
class Synced:
    label: str
    stopped: str
    sync_s: float
    faces: int
    batches: int
    batch_ms: list[float]
    scans: int
    tuples: int
    matched: int
    pending: int
    outcome: dict[str, int]


async def _sync_queue(dsn: str, custom_plans: bool) -> Queue:
    settings = DatabaseSettings(dsn=SecretStr(dsn))
    if not custom_plans:
        return await Queue.connect(settings, max_size=2)  # as `people sync` connects
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=2,
        command_timeout=settings.command_timeout_s,
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    return Queue(pool, settings)


async def _sync(
    conn: asyncpg.Connection[asyncpg.Record],
    dsn: str,
    library: str,
    face_ids: IntArray,
    new: Faces,
    loaded: Loaded,
    limit_s: float,
    custom_plans: bool,
) -> Synced:
    """sync_library over the new faces, none of them considered yet, timed batch by batch."""
    await conn.execute(
        "DELETE FROM facescan.face_people WHERE face_id = ANY($1::bigint[])", face_ids.tolist()
    )
    before = await _index_stats(conn)
    queue = await _sync_queue(dsn, custom_plans)
    marks = [time.perf_counter()]
    report = SyncReport()

    async def on_batch(batch: SyncReport) -> None:
        nonlocal report
        report += batch
        marks.append(time.perf_counter())

    stopped = ""
    try:
        await asyncio.wait_for(
            sync_library(PeopleDb(queue), library, on_batch=on_batch), timeout=limit_s
        )
    except TimeoutError:
        stopped = f"stopped after --sync-limit {limit_s:.0f} s"
    except QueueError as exc:  # e.g. a statement past the pool's command timeout
        stopped = f"failed: {exc!r}"
    finally:
        sync_s = time.perf_counter() - marks[0]
        await queue.close()  # its backends exit, flushing their statistics
    after = before
    for _ in range(50):
        after = await _index_stats(conn)
        if after != before:
            break
        await asyncio.sleep(0.2)
    rows = await conn.fetch(
        "SELECT face_id, person_id, status::text AS status FROM facescan.face_people "
        "WHERE face_id = ANY($1::bigint[])",
        face_ids.tolist(),
    )
    identity_of = {pid: ident for ident, pid in loaded.person_of.items()}
    truth = dict(zip(face_ids.tolist(), new.owners.tolist(), strict=True))
    outcome: dict[str, int] = {}  # "true identity named?: what the face got" -> faces
    for r in rows:
        real = truth[r["face_id"]]
        given = identity_of.get(r["person_id"]) if r["person_id"] is not None else None
        got = (
            "nobody's"
            if given is None
            else f"{r['status']} to them"
            if given == real
            else f"{r['status']} to someone else"
        )
        key = f"{'named' if real in loaded.person_of else 'unnamed or bystander'}: {got}"
        outcome[key] = outcome.get(key, 0) + 1
    label = (
        "plan_cache_mode = force_custom_plan on sync's connections"
        if custom_plans
        else "as `people sync` runs it (statement cache, PostgreSQL's plan_cache_mode auto)"
    )
    return Synced(
        label,
        stopped,
        sync_s,
        report.considered,
        report.batches,
        [(b - a) * 1000 for a, b in itertools.pairwise(marks)],
        after[0] - before[0],
        after[1] - before[1],
        report.matched,
        report.pending,
        dict(sorted(outcome.items())),
    )


async def _incremental(
    conn: asyncpg.Connection[asyncpg.Record],
    dsn: str,
    library: str,
    new: Faces,
    loaded: Loaded,
    limit_s: float,
    verbose: bool,
) -> tuple[float, list[Synced]]:
    """The new faces inserted (index maintained), then synced twice: as shipped, and with
    custom plans only (the same faces, their matches deleted in between)."""
    t = time.perf_counter()
    face_ids, _, _ = await _insert_faces(conn, library, new, "new")
    insert_s = time.perf_counter() - t
    await conn.execute("ANALYZE facescan.faces, facescan.images")
    plan = await _references_plan(conn, library, face_ids[:BATCH_SIZE])
    uses = INDEX in plan
    print(
        "sync's nearest_references plan for a batch of new faces (custom plan): "
        + (f"through {INDEX}" if uses else f"NOT through {INDEX}")
    )
    if verbose or not uses:
        print(plan)
    runs = []
    for custom in (False, True):
        runs.append(await _sync(conn, dsn, library, face_ids, new, loaded, limit_s, custom))
        print(f"sync done: {runs[-1].label}: {runs[-1].sync_s:.1f} s {runs[-1].stopped}")
    return insert_s, runs


# --- the run -------------------------------------------------------------------------


async def _settings_line(conn: asyncpg.Connection[asyncpg.Record]) -> str:
    names = ("shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers")
    values = [await conn.fetchval(f"SELECT current_setting('{n}')") for n in names]
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    server = await conn.fetchval("SHOW server_version")
    opts = await conn.fetchval(
        "SELECT coalesce(array_to_string(reloptions, ', '), '') FROM pg_class "
        "WHERE oid = to_regclass($1)",
        f"facescan.{INDEX}",
    )
    return (
        f"PostgreSQL {server}, pgvector {version}; "
        + ", ".join(f"{n} {v}" for n, v in zip(names, values, strict=True))
        + f"; index options: {opts or 'none (pgvector defaults m = 16, ef_construction = 64)'}"
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main_async(args: argparse.Namespace, dsn: str) -> int:
    identities = max(10, args.faces // FACES_PER_IDENTITY)
    library = f"match-bench-n{args.faces}-s{args.seed}"
    t = time.perf_counter()
    n_new_noise = round(args.new_faces * NOISE_SHARE)
    world, lib = _library(args.faces, identities, n_new_noise, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    queries = _embed(rng, world, _known(rng, lib, world, args.queries))
    new_owners = np.concatenate(
        [
            _known(rng, lib, world, args.new_faces - n_new_noise),
            world.identities + round(args.faces * NOISE_SHARE) + np.arange(n_new_noise),
        ]
    ).astype(np.int64)
    new = _in_photos(rng, new_owners, world)
    sizes = np.bincount(lib.owners[lib.owners < identities], minlength=identities)
    named = np.argsort(-sizes, kind="stable")[: max(1, identities // NAMED_SHARE)]
    print(
        f"faces: {args.faces:,} of {identities:,} identities "
        f"(+ {round(args.faces * NOISE_SHARE):,} bystanders) in {int(lib.photos[-1]) + 1:,} "
        f"photos; {args.queries:,} query faces and "
        f"{args.new_faces:,} new faces ({n_new_noise:,} of bystanders) of the same people; "
        f"generated in {time.perf_counter() - t:.1f} s (seed {args.seed})"
    )

    await migrate(DatabaseSettings(dsn=SecretStr(dsn)))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SET synchronous_commit = off; "
            f"SET maintenance_work_mem = '{args.maintenance_work_mem}'; "
            "SET max_parallel_maintenance_workers = 2"
        )
        await _vector_codec(conn)
        print(await _settings_line(conn))
        loaded = await _load(conn, library, lib, named)
        print(
            f"people: {len(loaded.person_of):,} named (the largest identities), "
            f"{loaded.references:,} reference faces ({loaded.references / args.faces:.1%} of the "
            "library); every other face considered, nobody's"
        )
        t = time.perf_counter()
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            pages = await conn.fetchval(
                "SELECT pg_prewarm($1::regclass) + pg_prewarm('facescan.faces') "
                "+ pg_prewarm((SELECT reltoastrelid FROM pg_class "
                "WHERE oid = 'facescan.faces'::regclass)::regclass)",
                f"facescan.{INDEX}",
            )
            print(
                f"prewarm: {pages:,} pages of the index and the table in "
                f"{time.perf_counter() - t:.1f} s"
            )
        except asyncpg.PostgresError as exc:
            print(f"prewarm: not available ({exc}); the first queries read from disk")

        t = time.perf_counter()
        truth = _exact(lib.embeddings, queries)
        exact_s = time.perf_counter() - t
        checked = [
            await _exact_in_postgres(conn, queries[i]) == loaded.face_ids[truth[i]].tolist()
            for i in range(min(3, len(queries)))
        ]
        print(
            f"exact search: numpy over {args.faces:,} x {SHAPE.dim} for {len(queries):,} queries "
            f"in {exact_s:.1f} s; equal to PostgreSQL's with the index off on "
            f"{sum(checked)} of {len(checked)} queries"
        )
        plan = await _plan(conn, queries[0])
        uses_index = INDEX in plan
        print(f"plan uses {INDEX}: {uses_index}")
        if not uses_index:
            print(plan)
        timed = [await _match(conn, queries, truth, loaded.face_ids, None)]
        for ef in EF_SEARCH_MORE:
            timed.append(await _match(conn, queries, truth, loaded.face_ids, ef))
        async with conn.transaction():
            await conn.fetch(query("search_settings"), MAX_SCAN_TUPLES)
            scan_settings = ", ".join(
                [
                    f"{n} {await conn.fetchval('SELECT current_setting($1)', n)}"
                    for n in ("hnsw.iterative_scan", "hnsw.max_scan_tuples", "hnsw.ef_search")
                ]
            )
        synced = await _incremental(conn, dsn, library, new, loaded, args.sync_limit, args.verbose)
        if not args.keep and args.dsn:
            t = time.perf_counter()
            await conn.execute("DELETE FROM facescan.libraries WHERE name = $1", library)
            print(f"deleted library {library} in {time.perf_counter() - t:.1f} s")
    finally:
        await conn.close()

    head = timed[0]
    ok = head.p95_ms <= GOAL_P95_MS and head.recall >= GOAL_RECALL and uses_index
    print(f"\nmatching settings (facescan_people.repository search_settings): {scan_settings}")
    print(f"{'figure':<58} {'goal':<12} {'measured':<26} verdict")
    print(
        f"{f'k={K} nearest per query face, p50 (ef_search {head.ef_search})':<58} {'':<12} "
        f"{head.p50_ms:.2f} ms"
    )
    print(
        f"{f'k={K} nearest per query face, p95 (ef_search {head.ef_search})':<58} "
        f"{f'<= {GOAL_P95_MS:.0f} ms':<12} {f'{head.p95_ms:.2f} ms':<26} "
        f"{_verdict(head.p95_ms <= GOAL_P95_MS)}"
    )
    print(
        f"{f'recall@{K} against exact search (ef_search {head.ef_search})':<58} "
        f"{f'>= {GOAL_RECALL}':<12} {f'{head.recall:.4f}':<26} "
        f"{_verdict(head.recall >= GOAL_RECALL)}"
    )
    for other in timed[1:]:
        print(
            f"{f'  for comparison, ef_search {other.ef_search}: p50 / p95, recall':<58} "
            f"{'':<12} {other.p50_ms:.2f} / {other.p95_ms:.2f} ms, {other.recall:.4f}"
        )
    insert_s, runs = synced
    print(
        f"{f'insert {args.new_faces:,} new faces (images, detections, faces; HNSW kept)':<58} "
        f"{'':<12} {insert_s:.1f} s"
    )
    for s in runs:
        batch_ms = sorted(s.batch_ms)
        print(f"sync_library of {args.new_faces:,} new faces into {args.faces:,}, {s.label}:")
        print(
            f"{'  time, faces per second':<58} {'':<12} "
            f"{s.sync_s:.1f} s = {s.faces / s.sync_s:,.0f} faces/s"
            + (f" ({s.stopped}; {s.faces:,} faces matched before)" if s.stopped else "")
        )
        print(
            f"{f'  batches of {BATCH_SIZE}: ms each (first, median, max)':<58} {'':<12} "
            + (
                f"{s.batch_ms[0]:.0f}, {statistics.median(batch_ms):.0f}, {batch_ms[-1]:.0f}"
                if s.batch_ms
                else "none finished"
            )
        )
        print(
            f"{'  nearest_references statements: per batch / per face':<58} {'':<12} "
            f"1 / {s.batches / max(1, s.faces):.4f} ({s.batches} for {s.faces:,} faces)"
        )
        print(
            f"{'  HNSW index scans per face (pg_stat_user_indexes)':<58} {'':<12} "
            f"{s.scans / max(1, s.faces):.2f} ({s.scans:,} scans, "
            f"{s.tuples / max(1, s.scans):,.0f} index tuples read per scan)"
        )
        print(
            f"{'  assigned: tagged / pending / nobody':<58} {'':<12} "
            f"{s.matched:,} / {s.pending:,} / {s.faces - s.matched - s.pending:,}"
        )
        print("  against the truth: " + ", ".join(f"{k} {v:,}" for k, v in s.outcome.items()))
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, shared (load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} at the end), PostgreSQL and this client on the same cores"
    )
    print(
        "RESULT:",
        "all goals met" if ok else "GOAL MISSED",
        f"(p95 <= {GOAL_P95_MS:.0f} ms and recall@{K} >= {GOAL_RECALL} at ef_search "
        f"{head.ef_search}, through the index)",
    )
    return 0 if ok else 1


def _embedded(data_dir: Path, shared_buffers: str) -> Any:
    """The embedded server in ``data_dir``, restarted once with ``shared_buffers``."""
    from facescan_operator.embedded_db import EmbeddedDatabase

    if not re.fullmatch(r"\d+(MB|GB)", shared_buffers):
        raise SystemExit(f"--shared-buffers {shared_buffers!r}: give e.g. 4GB")
    db = EmbeddedDatabase(data_dir, database="bench")

    async def configure() -> bool:
        conn = await asyncpg.connect(db.dsn)
        try:
            if await conn.fetchval("SHOW shared_buffers") == shared_buffers:
                return False
            await conn.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
            await conn.execute("ALTER SYSTEM SET max_wal_size = '16GB'")
            return True
        finally:
            await conn.close()

    if asyncio.run(configure()):
        db.stop()
        db = EmbeddedDatabase(data_dir, database="bench")
    return db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--new-faces", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dsn", help="use this PostgreSQL instead of an embedded one")
    parser.add_argument(
        "--keep", action="store_true", help="keep the data (embedded: in --data-dir) for a rerun"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path.home() / ".cache" / "facescan-bench" / "people-match",
        help="the embedded server's data with --keep",
    )
    parser.add_argument("--shared-buffers", default="4GB", help="the embedded server's")
    parser.add_argument("--maintenance-work-mem", default="6GB", help="for the index build")
    parser.add_argument(
        "--sync-limit", type=float, default=1800.0, help="seconds; the sync is stopped after"
    )
    parser.add_argument("--verbose", action="store_true", help="print the plans")
    parser.add_argument("--quick", action="store_true", help="100,000 faces")
    args = parser.parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file too
    if args.quick:
        args.faces = 100_000
    if args.dsn:
        return asyncio.run(main_async(args, args.dsn))
    with tempfile.TemporaryDirectory(prefix="facescan-bench-") as tmp:
        data_dir = args.data_dir if args.keep else Path(tmp) / "pg"
        if args.keep:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
        db = _embedded(data_dir, args.shared_buffers)
        try:
            return asyncio.run(main_async(args, db.dsn))
        finally:
            db.stop()
            if args.keep:
                print(f"kept: {data_dir}")


if __name__ == "__main__":
    raise SystemExit(main())
