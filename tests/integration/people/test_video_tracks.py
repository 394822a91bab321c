"""A video's track (one person across its sampled frames) is one face for People: its
first face is matched and clustered, the others show its person and are never left
over, so the frames of a known person in many videos never become a second, unnamed
person of their own."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from facescan_people import actions, directory
from facescan_people.clustering import cluster_incremental
from facescan_people.enrol import add_person
from facescan_people.recluster import cluster_full
from facescan_people.repository import PeopleDb
from facescan_people.sync import sync
from tests.integration.people.support import LIB, dlib_like, insert_faces, reference, vector_text

pytestmark = pytest.mark.slow

VIDEOS = 5
FRAMES = 3  # the person is in 3 of each video's sampled frames: one track


async def insert_video(db: asyncpg.Connection, path: str, embeddings: np.ndarray) -> list[int]:
    """A done video whose faces, one per frame, form track 0, as a detector's commit
    leaves them; returns the face ids in frame order."""
    image = await db.fetchval(
        "INSERT INTO facescan.images (library, path, width, height, size_class, state, "
        "face_count, kind, duration_ms) VALUES ($1, $2, 1280, 720, 0, 'done', $3, 'video', "
        "6000) RETURNING id",
        LIB,
        path,
        len(embeddings),
    )
    rows = await db.fetch(
        "INSERT INTO facescan.faces (image_id, box_top, box_right, box_bottom, box_left, "
        "model, embedding_dlib, frame_ms, track) SELECT $1, 10, 60, 70, 10, 'hog', e::vector, "
        "n * 1000, 0 FROM unnest($2::text[]) WITH ORDINALITY AS t(e, n) ORDER BY n "
        "RETURNING id",
        image,
        [vector_text(v) for v in embeddings],
    )
    return [r[0] for r in rows]


async def a_known_person_in_videos(db: asyncpg.Connection) -> list[list[int]]:
    """One photo of a person and VIDEOS videos of them; each video's face ids."""
    faces = dlib_like(seed=11, people=1, faces_each=1 + VIDEOS * FRAMES, strangers=0)["faces"]
    await insert_faces(db, faces[:1], "photos")
    return [
        await insert_video(db, f"videos/{v}.mp4", faces[1 + v * FRAMES : 1 + (v + 1) * FRAMES])
        for v in range(VIDEOS)
    ]


async def test_the_frames_of_a_known_person_follow_their_track_and_form_no_second_person(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    videos = await a_known_person_in_videos(db)
    await add_person(people, LIB, "Ann", [await reference(db, "photos/000000.jpg")])
    await sync(people, [LIB])

    report = await cluster_incremental(people, LIB)

    assert report.unnamed == 0
    assert report.unassigned == []
    assert await db.fetchval("SELECT count(*) FROM facescan.people") == 1
    for faces in videos:
        image = await db.fetchval("SELECT image_id FROM facescan.faces WHERE id = $1", faces[0])
        shown = {r["face_id"]: r["person"] for r in await directory.faces_of_image(people, image)}
        assert shown == dict.fromkeys(faces, "Ann")  # every frame's face shows the person
        held = await db.fetch(
            "SELECT face_id FROM facescan.face_people WHERE person_id IS NOT NULL "
            "AND face_id = ANY($1::bigint[])",
            faces,
        )
        assert [r[0] for r in held] == faces[:1]  # the person once per video
    counts = await db.fetchrow("SELECT * FROM facescan.people_counts($1)", LIB)
    assert (counts["people"], counts["assigned"], counts["unassigned"]) == (1, 1 + VIDEOS, 0)

    faces = videos[-1]
    await actions.move(people, [faces[-1]], "Bea", LIB, new=True)  # the user says: not Ann
    shown = {r["face_id"]: r["person"] for r in await directory.faces_of_image(people, image)}
    assert [shown[face] for face in faces] == ["Ann"] * (FRAMES - 1) + ["Bea"]


async def test_an_unknown_person_in_videos_is_one_unnamed_person_by_the_full_recluster_too(
    people: PeopleDb, db: asyncpg.Connection
) -> None:
    videos = await a_known_person_in_videos(db)  # nobody is named: all are unknown
    # someone else in 6 photos (HDBSCAN finds clusters among several, never one alone)
    others = await insert_faces(
        db, dlib_like(seed=12, people=1, faces_each=6, strangers=0)["faces"], "others"
    )

    await cluster_full(people, LIB)

    assert await db.fetchval("SELECT count(*) FROM facescan.people") == 2
    held = await db.fetch(
        "SELECT face_id FROM facescan.face_people WHERE person_id IS NOT NULL "
        "AND NOT face_id = ANY($1::bigint[]) ORDER BY face_id",
        others,
    )
    firsts = [faces[0] for faces in videos]
    assert [r[0] for r in held] == sorted([*firsts, await first_photo_face(db)])


async def first_photo_face(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT f.id FROM facescan.faces f JOIN facescan.images i ON i.id = f.image_id "
            "WHERE i.path = 'photos/000000.jpg'"
        )
    )
