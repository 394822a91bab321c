"""The user's corrections: merge, move (to a new person too), feature, remove, undo and
suggest, with their refusals (two faces of one photo in one person, unknown faces, a name
taken, nothing to undo), on three well-separated synthetic people clustered into unnamed
people."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from facescan_people import actions, directory
from facescan_people.clustering import cluster_incremental
from facescan_people.errors import (
    DuplicatePerson,
    InvalidName,
    NothingToUndo,
    PhotoClash,
    UnknownFace,
)
from facescan_people.recluster import cluster_full
from facescan_people.repository import PeopleDb
from facescan_people.undo import undo
from facescan_queue.repository import Queue
from tests.integration.people.support import LIB, dlib_like, insert_faces, vector_text

pytestmark = pytest.mark.slow


async def _three(people: PeopleDb, db: asyncpg.Connection) -> tuple[list[int], list[list[int]]]:
    """Three people of 8 faces (one photo each) clustered: (their person ids, faces)."""
    data = dlib_like(seed=11, people=3, faces_each=8, strangers=0)
    faces = await insert_faces(db, data["faces"], "p")
    await cluster_full(people, LIB)
    groups = [faces[k * 8 : (k + 1) * 8] for k in range(3)]
    owners = []
    for group in groups:
        held = {await _holder(db, f) for f in group}
        assert len(held) == 1
        owners.append(held.pop())
    assert None not in owners
    return owners, groups


async def _holder(db: asyncpg.Connection, face: int) -> int | None:
    return await db.fetchval(  # type: ignore[no-any-return]
        "SELECT person_id FROM facescan.face_people WHERE face_id = $1", face
    )


async def _photo_of(db: asyncpg.Connection, face: int) -> int:
    return await db.fetchval(  # type: ignore[no-any-return]
        "SELECT image_id FROM facescan.faces WHERE id = $1", face
    )


async def _second_face(db: asyncpg.Connection, image: int, like: np.ndarray) -> int:
    """Adds a face to an existing photo."""
    return await db.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left, model, "
        "embedding_dlib) VALUES ($1, 10, 200, 70, 150, 'hog', $2::text::vector) RETURNING id",
        image,
        vector_text(like),
    )


async def test_merge_moves_the_faces_and_undo_brings_the_person_back(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, b, _), groups = await _three(people, db)
    await directory.rename(people, f"#{b}", "Bob", LIB)

    merged = await actions.merge(people, f"unnamed #{a}", "Bob", LIB)

    assert merged["faces"] == 8
    assert merged["name"] == "Bob"  # the unnamed person took the merged one's name
    assert {await _holder(db, f) for f in groups[0] + groups[1]} == {a}
    assert await db.fetchval("SELECT count(*) FROM facescan.people WHERE id = $1", b) == 0

    undone = await undo(people, LIB)

    assert (undone["action"], undone["restored"], undone["skipped"]) == ("merge", 8, 0)
    assert {await _holder(db, f) for f in groups[1]} == {b}
    assert {await _holder(db, f) for f in groups[0]} == {a}
    names = dict(await db.fetch("SELECT id, name FROM facescan.people"))
    assert (names[a], names[b]) == (None, "Bob")
    with pytest.raises(NothingToUndo):
        await undo(people, LIB)


async def test_a_merge_that_would_put_two_faces_of_one_photo_in_a_person_is_refused(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, b, _), groups = await _three(people, db)
    photo = await _photo_of(db, groups[0][0])
    other = await _second_face(db, photo, np.zeros(128))
    await actions.move(people, [other], f"#{b}", LIB)

    with pytest.raises(PhotoClash, match=rf"faces {groups[0][0]} and {other}"):
        await actions.merge(people, f"#{a}", f"#{b}", LIB)
    assert await _holder(db, groups[1][0]) == b


async def test_move_gives_faces_to_a_person_refuses_a_photo_clash_and_undoes(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, b, _), groups = await _three(people, db)
    face = groups[1][0]

    with pytest.raises(UnknownFace, match="999999"):
        await actions.move(people, [face, 999999], f"#{a}", LIB)
    await actions.move(people, [face], f"#{a}", LIB)
    row = await db.fetchrow(
        "SELECT person_id, source::text FROM facescan.face_people WHERE face_id = $1", face
    )
    assert tuple(row) == (a, "user")

    # a's face in that photo now: another face of it cannot join a
    other = await _second_face(db, await _photo_of(db, face), np.zeros(128))
    with pytest.raises(PhotoClash, match=rf"already has face {face}"):
        await actions.move(people, [other], f"#{a}", LIB)

    await undo(people, LIB)
    row = await db.fetchrow(
        "SELECT person_id, source::text FROM facescan.face_people WHERE face_id = $1", face
    )
    assert tuple(row) == (b, "automatic")


async def test_move_to_a_new_person_makes_them_and_undo_deletes_them_again(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (_, b, _), groups = await _three(people, db)
    faces = groups[1][:3]
    await directory.rename(people, f"#{b}", "Bob", LIB)

    with pytest.raises(DuplicatePerson):
        await actions.move(people, faces, "Bob", LIB, new=True)
    assert {await _holder(db, f) for f in faces} == {b}  # the refused move changed nothing
    with pytest.raises(InvalidName):
        await actions.move(people, faces, "  ", LIB, new=True)

    moved = await actions.move(people, faces, "Bob's brother", None, new=True)

    brother = await db.fetchval("SELECT id FROM facescan.people WHERE name = 'Bob''s brother'")
    assert (moved["person"], moved["new"]) == ("Bob's brother", True)
    assert {await _holder(db, f) for f in faces} == {brother}
    shown = await directory.show(people, "Bob's brother", LIB)
    assert shown["featured_face"] in faces
    assert await _holder(db, groups[1][3]) == b  # the other faces stay Bob's

    undone = await undo(people, LIB)

    assert (undone["restored"], undone["skipped"]) == (3, 0)
    assert {await _holder(db, f) for f in faces} == {b}
    assert await db.fetchval("SELECT count(*) FROM facescan.people WHERE id = $1", brother) == 0


async def test_feature_shows_one_of_the_persons_own_faces(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, _, _), groups = await _three(people, db)
    chosen = groups[0][5]

    done = await actions.feature(people, f"#{a}", chosen, LIB)

    assert done["featured_face"] == chosen
    assert (await directory.show(people, f"#{a}", LIB))["featured_face"] == chosen
    with pytest.raises(UnknownFace, match="not unnamed #"):
        await actions.feature(people, f"#{a}", groups[1][0], LIB)  # somebody else's face
    assert (await directory.show(people, f"#{a}", LIB))["featured_face"] == chosen

    await actions.remove(people, [chosen])  # no longer theirs: another face is shown

    featured = (await directory.show(people, f"#{a}", LIB))["featured_face"]
    assert featured in groups[0]
    assert featured != chosen


async def test_a_removed_face_is_never_given_back_by_clustering_and_undo_restores_it(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, _, _), groups = await _three(people, db)
    face = groups[0][3]

    await actions.remove(people, [face])
    assert await _holder(db, face) is None
    with pytest.raises(UnknownFace, match="nobody's"):
        await actions.remove(people, [face])

    await cluster_incremental(people, LIB)
    assert await _holder(db, face) is None
    await cluster_full(people, LIB)
    assert await _holder(db, face) is None

    await undo(people, LIB)
    assert await _holder(db, face) == a
    assert await db.fetchval("SELECT count(*) FROM facescan.face_rejections") == 0


async def test_suggest_lists_the_nearest_people_first_with_their_distances(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, b, c), groups = await _three(people, db)
    # a look-alike of a: faces near a's, in their own photos
    rng = np.random.default_rng(3)
    centre = await db.fetch(
        "SELECT embedding_dlib::real[] FROM facescan.faces WHERE id = ANY($1)", groups[0]
    )
    mean = np.mean([np.asarray(r[0]) for r in centre], axis=0)
    twin = mean + rng.normal(0, 0.45 / np.sqrt(128), 128)
    near = await insert_faces(db, twin + rng.normal(0, 0.02, (6, 128)), "twin")
    await cluster_incremental(people, LIB)
    lookalike = await _holder(db, near[0])
    assert lookalike not in (None, a)

    result = await actions.suggest(people, f"#{a}", LIB, 10)

    found = [s["id"] for s in result["suggestions"]]
    assert found[0] == lookalike
    assert set(found) == {lookalike, b, c}
    distances = [s["distance"] for s in result["suggestions"]]
    assert distances == sorted(distances)
    assert distances[0] < 0.6 < distances[1]


async def test_people_show_and_faces_give_face_ids(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection
) -> None:
    (a, _, _), groups = await _three(people, db)
    shown = await directory.show(people, f"unnamed #{a}", LIB)
    assert shown["display"] == f"unnamed #{a}"
    assert shown["name"] is None
    assert sorted(f["face_id"] for f in shown["faces"]) == groups[0]
    listed, _ = await directory.list_people(people, LIB)
    assert [p.id for p in listed] == sorted(p.id for p in listed)  # unnamed: by id
    image = await _photo_of(db, groups[0][0])
    (entry,) = (await directory.image_people(queue, image)).values()
    assert entry["face_id"] == groups[0][0]
    assert entry["person"] == f"unnamed #{a}"
