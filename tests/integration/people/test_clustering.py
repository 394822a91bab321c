"""`people cluster` through the database: the incremental path (pgvector index, a batch
per transaction) and the full re-cluster find the synthetic people, never put two faces
of one photo in one person nor mix models, and a full re-cluster keeps every name and
every correction of the user."""

from __future__ import annotations

from collections import Counter

import asyncpg
import pytest

from facescan_people import actions, directory, synthetic
from facescan_people.clustering import cluster_incremental
from facescan_people.pg_index import PgIndex
from facescan_people.recluster import cluster_full
from facescan_people.repository import PeopleDb
from tests.integration.people.cluster_support import (
    assert_well_formed,
    holders,
    insert_dataset,
    scores,
    small,
)
from tests.integration.people.support import LIB

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("shape", "kind"), [(synthetic.DLIB, "dlib"), (synthetic.ARCFACE, "arcface")]
)
async def test_incremental_clustering_finds_the_people_one_batch_at_a_time(
    people: PeopleDb, db: asyncpg.Connection, shape: synthetic.ModelShape, kind: str
) -> None:
    ds = small(seed=1, shape=shape)
    faces = await insert_dataset(db, ds, "lib", kind)

    report = await cluster_incremental(people, LIB, batch_size=60)

    labels = await holders(db, faces)
    assert scores(ds, labels).f >= 0.9, scores(ds, labels)
    assert report.batches >= 2  # faces pulled into a cluster are not considered again
    assert report.assigned == len(faces) - labels.count(None)
    assert report.unnamed == len({x for x in labels if x is not None})
    assert len(report.unassigned) == labels.count(None)
    await assert_well_formed(db)
    again = await cluster_incremental(people, LIB, batch_size=60)
    assert again.considered == labels.count(None)  # only the faces nobody has


@pytest.mark.parametrize(
    ("shape", "kind"), [(synthetic.DLIB, "dlib"), (synthetic.ARCFACE, "arcface")]
)
async def test_full_clustering_finds_the_people_in_one_transaction(
    people: PeopleDb, db: asyncpg.Connection, shape: synthetic.ModelShape, kind: str
) -> None:
    ds = small(seed=2, shape=shape)
    faces = await insert_dataset(db, ds, "lib", kind)

    report = await cluster_full(people, LIB)

    labels = await holders(db, faces)
    assert scores(ds, labels).f >= 0.9, scores(ds, labels)
    assert report.created == len({x for x in labels if x is not None})
    await assert_well_formed(db)
    # run again: the same people, their ids kept
    again = await cluster_full(people, LIB)
    assert await holders(db, faces) == labels
    assert (again.created, again.kept, again.removed) == (0, report.created, 0)


async def test_models_are_clustered_apart(people: PeopleDb, db: asyncpg.Connection) -> None:
    dlib = await insert_dataset(db, small(seed=3), "dlib", "dlib")
    arc = await insert_dataset(db, small(seed=3, shape=synthetic.ARCFACE), "arc", "arcface")
    await cluster_full(people, LIB)
    await cluster_incremental(people, LIB)
    a = {x for x in await holders(db, dlib) if x is not None}
    b = {x for x in await holders(db, arc) if x is not None}
    assert a
    assert b
    assert not a & b
    await assert_well_formed(db)


async def test_a_full_recluster_keeps_names_and_the_users_corrections(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    ds = small(seed=4)
    faces = await insert_dataset(db, ds, "lib")
    await cluster_incremental(people, LIB)
    labels = await holders(db, faces)
    sizes = Counter(x for x in labels if x is not None)
    (alice, _), (bob, _) = sizes.most_common(2)  # the two largest clusters
    await directory.rename(people, f"#{alice}", "Alice", LIB)
    alices = [f for f, x in zip(faces, labels, strict=True) if x == alice]
    bobs = [f for f, x in zip(faces, labels, strict=True) if x == bob]
    # the user says one of Bob's faces is Alice's (even if the clustering disagrees) and
    # that another is not Bob's
    images = dict(await db.fetch("SELECT id, image_id FROM facescan.faces"))
    alice_images = {images[f] for f in alices}
    moved = next(f for f in bobs if images[f] not in alice_images)
    await actions.move(people, [moved], "Alice", LIB)
    removed = next(f for f in bobs if f != moved)
    await actions.remove(people, [removed])

    await cluster_full(people, LIB)
    await cluster_full(people, LIB)

    after = await holders(db, faces)
    assert await db.fetchval("SELECT name FROM facescan.people WHERE id = $1", alice) == "Alice"
    assert all(after[faces.index(f)] == alice for f in alices)  # named: kept exactly
    row = await db.fetchrow(
        "SELECT person_id, source::text FROM facescan.face_people WHERE face_id = $1", moved
    )
    assert tuple(row) == (alice, "user")
    # the removed face is not with Bob's other faces, whoever has them now
    bobs_now = Counter(after[faces.index(f)] for f in bobs if f not in (moved, removed))
    heirs = [p for p, _ in bobs_now.most_common() if p is not None][:1]
    assert heirs  # Bob's faces are still together
    assert after[faces.index(removed)] not in heirs
    await assert_well_formed(db)


async def test_a_batch_that_fails_midway_writes_nothing(
    people: PeopleDb, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = small(seed=5)
    await insert_dataset(db, ds, "lib")
    await cluster_incremental(people, LIB, batch_size=100)
    # new photos arrive; the batch clustering them dies after its 30th assignment
    await insert_dataset(db, small(seed=6), "later")
    state = "SELECT face_id, person_id FROM facescan.face_people ORDER BY 1"
    people_state = "SELECT id, name, featured_face FROM facescan.people ORDER BY 1"
    before = (await db.fetch(state), await db.fetch(people_state))
    calls = 0
    assign = PgIndex.assign

    def failing(self: PgIndex, face: int, label: int) -> None:
        nonlocal calls
        calls += 1
        if calls > 30:
            raise RuntimeError("killed")
        assign(self, face, label)

    monkeypatch.setattr(PgIndex, "assign", failing)
    with pytest.raises(RuntimeError, match="killed"):
        await cluster_incremental(people, LIB, batch_size=1000)
    assert calls > 30
    assert (await db.fetch(state), await db.fetch(people_state)) == before
    monkeypatch.setattr(PgIndex, "assign", assign)
    report = await cluster_incremental(people, LIB, batch_size=1000)
    assert report.assigned > 30
    await assert_well_formed(db)
