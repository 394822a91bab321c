"""Matching faces to people with the real dlib embeddings of the sample photos: the same
person's photos match, different people's do not, sync matches faces found later, and a
person added later takes the faces nobody has, or that are pending for someone farther."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_people.enrol import add_person
from facescan_people.errors import DuplicatePerson, FaceTaken, InvalidName
from facescan_people.repository import PeopleDb
from facescan_people.sync import sync
from facescan_queue.repository import Queue
from tests.integration.people.support import LIB, commit_images, reference, sample_faces, who

pytestmark = pytest.mark.slow

OBAMA = ("Barack Obama", "matched", "user")
TAGGED = ("Barack Obama", "matched", "automatic")


async def test_a_person_from_one_photo_is_tagged_in_their_other_photo_and_nobody_else(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    names = ["obama.jpg", "obama2.jpg", "biden.jpg", "group_t1.jpg", "astronaut.png"]
    await commit_images(queue, {n: sample_faces(n) for n in names})

    added = await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])

    assert (added.references, added.matched, added.pending) == (1, 2, 0)
    faces = await who(db)
    assert faces["obama.jpg"] == [OBAMA]
    assert faces["obama2.jpg"] == [TAGGED]
    for other in ("biden.jpg", "group_t1.jpg", "astronaut.png"):
        assert all(person is None for person, _, _ in faces[other]), other
    distance = await db.fetchval(
        "SELECT fp.distance FROM facescan.face_people fp JOIN facescan.images i "
        "ON i.id = fp.image_id WHERE i.path = 'obama2.jpg'"
    )
    assert 0.3 < distance < 0.4  # obama.jpg to obama2.jpg with dlib: 0.346


async def test_sync_tags_the_faces_found_after_the_person_was_added(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg")})
    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])
    later = ["obama2.jpg", "biden.jpg", "group_t1.jpg"]
    await commit_images(queue, {n: sample_faces(n) for n in later})
    assert (await who(db))["obama2.jpg"] == [(None, None, None)]

    report = await sync(people, [LIB])

    assert (report.people, report.considered, report.matched, report.pending) == (1, 8, 1, 0)
    faces = await who(db)
    assert faces["obama2.jpg"] == [TAGGED]
    assert faces["biden.jpg"] == [(None, None, None)]
    considered = await db.fetchval("SELECT count(*) FROM facescan.face_people")
    assert considered == 9  # every face has its row: the next sync has nothing to do
    again = await sync(people, [LIB])
    assert (again.considered, again.batches) == (0, 0)


async def test_a_library_without_people_syncs_nothing_and_records_nothing(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg")})
    report = await sync(people, [LIB])
    assert (report.people, report.considered) == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.face_people") == 0


async def test_a_person_added_later_takes_faces_nobody_has_or_pending_for_someone_farther(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    names = ["obama.jpg", "obama2.jpg", "biden.jpg"]
    await commit_images(queue, {n: sample_faces(n) for n in names})
    # a generous match distance: Obama's faces (0.7-0.9 from Biden's) are pending for him
    await people.fetch("settings", LIB)
    await db.execute("UPDATE facescan.people_settings SET dlib_match_distance = 0.95")
    await add_person(people, LIB, "Joe Biden", [await reference(db, "biden.jpg")])
    faces = await who(db)
    assert faces["obama.jpg"] == [("Joe Biden", "pending", "automatic")]
    assert faces["obama2.jpg"] == [("Joe Biden", "pending", "automatic")]

    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])

    faces = await who(db)
    assert faces["obama.jpg"] == [OBAMA]
    assert faces["obama2.jpg"] == [TAGGED]
    assert faces["biden.jpg"] == [("Joe Biden", "matched", "user")]


async def test_faces_nobody_had_at_the_last_sync_go_to_a_person_added_later(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {n: sample_faces(n) for n in ["obama.jpg", "biden.jpg"]})
    await add_person(people, LIB, "Joe Biden", [await reference(db, "biden.jpg")])
    await commit_images(queue, {"obama2.jpg": sample_faces("obama2.jpg")})
    await sync(people, [LIB])
    considered = await db.fetchval(
        "SELECT fp.person_id IS NULL FROM facescan.face_people fp JOIN facescan.images i "
        "ON i.id = fp.image_id WHERE i.path = 'obama2.jpg'"
    )
    assert considered is True  # considered by the sync, and nobody's

    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])

    assert (await who(db))["obama2.jpg"] == [TAGGED]


async def test_user_assignments_survive_sync_and_people_added_later(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    obama2 = sample_faces("obama2.jpg")
    await commit_images(queue, {"obama.jpg": sample_faces("obama.jpg"), "obama2.jpg": obama2})
    await add_person(people, LIB, "Barack Obama", [await reference(db, "obama.jpg")])
    assert (await who(db))["obama2.jpg"] == [TAGGED]
    # the user says obama2.jpg is someone else: their word beats the automatic match
    await add_person(people, LIB, "Young Obama", [await reference(db, "obama2.jpg")])
    before = await db.fetchrow(
        "SELECT * FROM facescan.face_people fp JOIN facescan.images i ON i.id = fp.image_id "
        "WHERE i.path = 'obama2.jpg'"
    )
    assert before["source"] == "user"

    # a copy of obama2.jpg's face, found later, is nearest to Young Obama's reference...
    await commit_images(queue, {"copy/obama2.jpg": obama2})
    await sync(people, [LIB])
    # ...and a person made from that copy (distance 0 to obama2.jpg) does not take it
    await add_person(people, LIB, "Somebody", [await reference(db, "copy/obama2.jpg")])

    faces = await who(db)
    assert faces["obama2.jpg"] == [("Young Obama", "matched", "user")]
    assert faces["copy/obama2.jpg"] == [("Somebody", "matched", "user")]
    assert faces["obama.jpg"] == [OBAMA]
    after = await db.fetchrow(
        "SELECT * FROM facescan.face_people fp JOIN facescan.images i ON i.id = fp.image_id "
        "WHERE i.path = 'obama2.jpg'"
    )
    assert after == before
    with pytest.raises(FaceTaken, match="Young Obama"):
        await add_person(people, LIB, "Third", [await reference(db, "obama2.jpg")])


async def test_names_are_unique_per_library_and_never_empty(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    await commit_images(queue, {n: sample_faces(n) for n in ["obama.jpg", "obama2.jpg"]})
    await add_person(people, LIB, "  Barack Obama ", [await reference(db, "obama.jpg")])
    with pytest.raises(DuplicatePerson, match="Barack Obama"):
        await add_person(people, LIB, "Barack Obama", [await reference(db, "obama2.jpg")])
    with pytest.raises(InvalidName, match="empty"):
        await add_person(people, LIB, "   ", [await reference(db, "obama2.jpg")])
    with pytest.raises(InvalidName, match="control"):
        await add_person(people, LIB, "Barack\nObama", [await reference(db, "obama2.jpg")])
    names = [r[0] for r in await db.fetch("SELECT name FROM facescan.people")]
    assert names == ["Barack Obama"]
    # the refused adds changed nothing: obama2.jpg is still the automatic match
    assert (await who(db))["obama2.jpg"] == [TAGGED]


async def test_each_library_gets_the_default_thresholds_of_each_model(
    queue: Queue, people: PeopleDb
) -> None:
    (row,) = await people.fetch("settings", LIB)
    assert (row["dlib_match_distance"], row["dlib_auto_tag_distance"]) == (
        pytest.approx(0.6),
        pytest.approx(0.5),
    )
    assert (row["arcface_match_distance"], row["arcface_auto_tag_distance"]) == (
        pytest.approx(0.5),
        pytest.approx(0.4),
    )
    assert (row["min_cluster_size"], row["min_samples"]) == (3, 2)
