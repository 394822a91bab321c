"""`people add`: a new person from reference faces, and the faces nobody has yet that
are near them.

Called by the `facescan people add` command with faces already chosen (one per photo).
In one transaction (the library's matching lock held): the person is made, the reference
faces become theirs (source user, matched), and for each reference face an index-ordered
query of its nearest faces within the match distance finds the faces that are nobody's,
new to matching, or pending for someone farther: they are matched to the new person
only (never a cross join of people and faces). A face the user gave someone, or an
automatic match of another person, is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facescan_people.errors import FaceTaken, InvalidName, NoFace
from facescan_people.matching import decide, nearest
from facescan_people.models import Candidate, Kind, Source, Status
from facescan_people.repository import MAX_SCAN_TUPLES, PeopleDb, Tx

FIRST_PAGE = 200
"""Nearest faces asked for per reference face at first; more while all are near enough."""


@dataclass(frozen=True)
class Reference:
    """A face the user says is the person, and its photo."""

    face_id: int
    image_id: int
    path: str


@dataclass(frozen=True)
class Enrolled:
    """What `people add` did."""

    name: str
    library: str
    references: int
    matched: int
    pending: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "library": self.library,
            "references": self.references,
            "matched": self.matched,
            "pending": self.pending,
        }


def check_name(name: str) -> str:
    """The name without surrounding spaces; InvalidName if empty or with control
    characters (a tab or a newline would break every listing)."""
    clean = name.strip()
    if not clean:
        raise InvalidName("a person's name cannot be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in clean):
        raise InvalidName(f"a person's name cannot hold control characters: {clean!r}")
    if re.fullmatch(r"(?:unnamed )?#\d+", clean):
        raise InvalidName(f"{clean!r} names an unnamed person by id: choose another name")
    return clean


async def add_person(
    db: PeopleDb, library: str, name: str, references: Sequence[Reference]
) -> Enrolled:
    """Makes the person from ``references`` (faces of distinct photos of ``library``)
    and matches the faces near them; DuplicatePerson, FaceTaken, NoFace otherwise."""
    name = check_name(name)
    if not references:
        raise NoFace("a person needs at least one reference face")
    by_image = {r.image_id: r for r in references}
    if len(by_image) < len(references):
        raise NoFace("give one face per photo: a person has at most one face in a photo")
    async with db.transaction(library) as tx:
        await _refuse_taken(tx, references)
        person = await tx.create_person(library, name, references[0].face_id)
        await tx.record_user(person, [(r.face_id, r.image_id) for r in references])
        thresholds = await tx.thresholds(library)
        mine = {r.face_id for r in references}
        found: list[Candidate] = []
        for ref in references:
            for row in await _near(
                tx, ref.face_id, thresholds.dlib.match, thresholds.arcface.match
            ):
                if row["library"] == library and row["face_id"] not in mine and _open(row):
                    kind = Kind(row["kind"])
                    found.append(
                        Candidate(row["face_id"], row["image_id"], person, kind, row["distance"])
                    )
        candidates = nearest(found)
        holders = await tx.holders(sorted({(person, c.image_id) for c in candidates}))
        decision = decide(candidates, holders, thresholds)
        await tx.unassign(decision.unassign)
        await tx.record(decision.assign)
    return Enrolled(
        name,
        library,
        len(references),
        len(references) + sum(a.status is Status.MATCHED for a in decision.assign),
        sum(a.status is Status.PENDING for a in decision.assign),
    )


async def _refuse_taken(tx: Tx, references: Sequence[Reference]) -> None:
    rows = await tx.assignments_of([r.face_id for r in references])
    for row in rows:
        if row["source"] != Source.AUTOMATIC:
            path = next(r.path for r in references if r.face_id == row["face_id"])
            raise FaceTaken(
                f"the face in {path} is already {row['person']}'s (given by the user): "
                "choose another face with --face"
            )


def _open(row: Any) -> bool:
    """Whether matching may give this face to the new person: nobody's, new to matching,
    or pending (automatic) for someone and farther from them than from the new person."""
    if not row["considered"] or row["person_id"] is None:
        return True
    return bool(
        row["source"] == Source.AUTOMATIC
        and row["status"] == Status.PENDING
        and row["held_distance"] > row["distance"]
    )


async def _near(tx: Tx, face_id: int, dlib_match: float, arcface_match: float) -> list[Any]:
    """The faces within the match distance of ``face_id`` (its model's), nearest first,
    through the index: asked for in growing pages until one ends beyond the distance
    (at most MAX_SCAN_TUPLES faces per reference face)."""
    limit = FIRST_PAGE
    while True:
        rows = await tx.nearest_faces(face_id, limit)
        if not rows:
            return []
        match = dlib_match if rows[0]["kind"] == Kind.DLIB else arcface_match
        near = [r for r in rows if r["distance"] <= match]
        if len(near) < len(rows) or len(rows) < limit or limit >= MAX_SCAN_TUPLES:
            return near
        limit = min(limit * 4, MAX_SCAN_TUPLES)
