"""The hard rules of matching: never two faces of one photo in one person (the nearer one
wins, in `people add`, in one sync batch and across batches, and the database refuses
it anyway); embeddings of two models are never compared; adding a person looks faces up
through the HNSW index."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import numpy as np
import pytest

from facescan_people.enrol import add_person
from facescan_people.queries import query
from facescan_people.repository import PeopleDb
from facescan_people.sync import sync
from facescan_queue.models import FaceResult
from facescan_queue.repository import Queue
from tests.integration.people.support import (
    LIB,
    commit_images,
    dlib_like,
    insert_faces,
    reference,
    sample_faces,
    who,
)

pytestmark = pytest.mark.slow


def twins() -> tuple[FaceResult, FaceResult]:
    """Two faces in one synthetic photo with near-identical embeddings: obama.jpg's face
    moved by 0.05 (left in the photo) and by 0.02 (right), both well within 0.5 of it."""
    (face,) = sample_faces("obama.jpg")
    base = np.array(face.embedding)
    rng = np.random.default_rng(7)
    step = rng.normal(0, 1, 128)
    step /= np.linalg.norm(step)
    far, near = base + 0.05 * step, base - 0.02 * step
    left = replace(face, left=10, right=300, embedding=tuple(far))
    right = replace(face, left=400, right=700, embedding=tuple(near))
    return left, right


async def test_a_new_person_takes_only_the_nearer_of_two_faces_of_one_photo(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg"), "twins.jpg": twins()})

    added = await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])

    assert added.matched == 2
    assert (await who(db))["twins.jpg"] == [
        (None, None, None),
        ("Barack Obama", "matched", "automatic"),
    ]


@pytest.mark.parametrize("batch_size", [500, 1])
async def test_a_sync_gives_a_person_only_the_nearer_face_of_one_photo(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection, batch_size: int
) -> None:
    """In one batch the nearer wins at once; a face at a time, the farther (committed
    first, so matched first) is displaced when the nearer one comes."""
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg")})
    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])
    await commit_images(queue, {"twins.jpg": twins()})

    report = await sync(people, [LIB], batch_size=batch_size)

    assert (await who(db))["twins.jpg"] == [
        (None, None, None),
        ("Barack Obama", "matched", "automatic"),
    ]
    assert report.considered == 2
    assert report.displaced == (1 if batch_size == 1 else 0)
    assert report.matched == (2 if batch_size == 1 else 1)


async def test_the_database_refuses_two_faces_of_one_photo_in_one_person(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg"), "twins.jpg": twins()})
    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])
    loser = (await db.fetch("SELECT id, image_id FROM facescan.faces ORDER BY box_left"))[0]
    with pytest.raises(asyncpg.UniqueViolationError, match="one_face_per_photo"):
        await db.execute(
            "INSERT INTO facescan.face_people (face_id, image_id, person_id, source, status) "
            "SELECT $1, $2, id, 'user', 'matched' FROM facescan.people",
            loser["id"],
            loser["image_id"],
        )


async def test_faces_of_another_model_are_never_compared(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    """An ArcFace face (512-d) is matched to ArcFace references only, by cosine distance;
    a dlib person never takes it, nor an ArcFace person a dlib face."""
    rng = np.random.default_rng(3)
    anna = rng.normal(0, 1, 512)
    again = anna + rng.normal(0, 0.2, 512)  # cosine distance about 0.02
    arcface = [
        FaceResult(10, 110, 120, 10, 0.9, (), tuple(float(x) for x in anna)),
        FaceResult(10, 110, 120, 10, 0.9, (), tuple(float(x) for x in again)),
    ]
    await commit_images(
        queue,
        {
            "obama.jpg": sample_faces("obama.jpg"),
            "obama2.jpg": sample_faces("obama2.jpg"),
            "anna1.jpg": arcface[:1],
            "anna2.jpg": arcface[1:],
        },
    )
    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])
    await add_person(people, LIB, "Anna", [await reference(db, "anna1.jpg")])
    await sync(people, [LIB])

    faces = await who(db)
    assert faces["anna2.jpg"] == [("Anna", "matched", "automatic")]
    assert faces["obama2.jpg"] == [("Barack Obama", "matched", "automatic")]
    distance = await db.fetchval(
        "SELECT fp.distance FROM facescan.face_people fp JOIN facescan.images i "
        "ON i.id = fp.image_id WHERE i.path = 'anna2.jpg'"
    )
    assert distance == pytest.approx(0.02, abs=0.015)  # cosine, not Euclidean (about 4.5)


async def test_adding_a_person_looks_faces_up_through_the_index(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    """On a library of 3,000 faces the rematch of a new person reads the nearest faces
    from the HNSW index, not the whole table, and finds that person's faces."""
    data = dlib_like(seed=11, people=30, faces_each=60, strangers=1200)
    ids = await insert_faces(db, data["faces"], "synthetic")
    await db.execute("ANALYZE facescan.faces")
    plan = await db.fetch("EXPLAIN " + query("nearest_faces"), ids[0], 200)
    text = "\n".join(r[0] for r in plan)
    assert "faces_embedding_dlib" in text, text

    added = await add_person(people, LIB, "Person 0", [await reference(db, "synthetic/000000.jpg")])

    assert added.matched == 60  # the reference and the 59 other faces of person 0
    assert added.pending == 0
