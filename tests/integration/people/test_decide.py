"""The matching decision as a table (pure, no database): bands, the nearest face of a
photo, and what a person already has in that photo."""

from __future__ import annotations

import pytest

from facescan_people.matching import decide, nearest
from facescan_people.models import Band, Candidate, Holder, Kind, Source, Status, Thresholds

LIMITS = Thresholds(Band(0.6, 0.5), Band(0.5, 0.4), 3, 3, 2)


def face(face_id: int, distance: float, *, image: int = 1, person: int = 7) -> Candidate:
    return Candidate(face_id, image, person, Kind.DLIB, distance)


@pytest.mark.parametrize(
    ("distance", "kind", "status"),
    [
        (0.35, Kind.DLIB, Status.MATCHED),
        (0.5, Kind.DLIB, Status.MATCHED),
        (0.55, Kind.DLIB, Status.PENDING),
        (0.61, Kind.DLIB, None),
        (0.45, Kind.ARCFACE, Status.PENDING),  # pending for ArcFace, tagged for dlib
        (0.55, Kind.ARCFACE, None),
    ],
)
def test_the_band_of_a_distance_depends_on_the_model(
    distance: float, kind: Kind, status: Status | None
) -> None:
    decision = decide([Candidate(1, 1, 7, kind, distance)], [], LIMITS)
    assert [a.status for a in decision.assign] == ([status] if status else [])


def test_each_face_goes_to_its_nearest_person() -> None:
    candidates = nearest([face(1, 0.4, person=7), face(1, 0.3, person=8), face(2, 0.2)])
    assert [(c.face_id, c.person_id) for c in candidates] == [(1, 8), (2, 7)]


def test_of_two_faces_of_one_photo_only_the_nearer_goes_to_the_person() -> None:
    decision = decide([face(1, 0.45), face(2, 0.3), face(3, 0.2, image=2)], [], LIMITS)
    assert [a.face_id for a in decision.assign] == [2, 3]


@pytest.mark.parametrize(
    ("source", "held", "assigned", "unassigned"),
    [
        (Source.USER, None, [], []),  # the user's face of that photo stays, however far
        (Source.IMPORT, None, [], []),
        (Source.AUTOMATIC, 0.2, [], []),  # a nearer automatic match stays
        (Source.AUTOMATIC, 0.4, [1], [9]),  # a farther one gives way
    ],
)
def test_a_face_the_person_has_in_that_photo(
    source: Source, held: float | None, assigned: list[int], unassigned: list[int]
) -> None:
    holder = Holder(9, 1, 7, source, held)
    decision = decide([face(1, 0.3)], [holder], LIMITS)
    assert [a.face_id for a in decision.assign] == assigned
    assert list(decision.unassign) == unassigned
