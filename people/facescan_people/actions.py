"""The user's corrections of people: merge two people, move faces to a person, remove
faces from their person, and merge suggestions.

Called by the `facescan people merge|move|remove|feature|suggest` commands. Each correction runs
in one transaction holding the library's matching lock, refuses what would give a person
two faces of one photo (naming the photo and the faces), and logs in
facescan.people_actions what reverses it (facescan_people.undo reads it). A removed face
is marked rejected for its person (facescan.face_rejections): matching and clustering
never give it back to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from facescan_people.directory import display_path, find
from facescan_people.enrol import check_name
from facescan_people.errors import MixedLibraries, PhotoClash, SamePerson, UnknownFace
from facescan_people.models import display_name
from facescan_people.repository import PeopleDb, Tx

SUGGEST_REFERENCES = 50
"""A person's reference faces `people suggest` searches from."""
SUGGEST_NEIGHBOURS = 10
"""Other people's reference faces it asks for per reference face, nearest first."""

Row = list[Any]
"""A face_people row as the undo log keeps it: face, image, person, source, status,
distance, and whether the face had a row at all."""


def _name(row: Any) -> str:
    return display_name(row["name"], row["id"])


async def log(tx: Tx, library: str, action: str, summary: str, undo: dict[str, Any]) -> None:
    await tx.fetch("log_action", library, action, summary, json.dumps(undo))


async def write_rows(tx: Tx, rows: Sequence[Row]) -> None:
    """Writes face_people rows as the undo log keeps them (no row: deleted)."""
    present = [r for r in rows if r[6]]
    await tx.fetch("delete_rows", [r[0] for r in rows if not r[6]])
    if present:
        columns = list(zip(*(r[:6] for r in present), strict=True))
        await tx.fetch("set_rows", *(list(c) for c in columns))


async def merge(db: PeopleDb, into: str, other: str, library: str | None) -> dict[str, Any]:
    """``other``'s faces become ``into``'s and ``other`` is deleted; an unnamed ``into``
    takes ``other``'s name. PhotoClash when both have a face in one photo."""
    a, b = await find(db, into, library), await find(db, other, library)
    if a["id"] == b["id"]:
        raise SamePerson(f"{_name(a)} and {_name(b)} are the same person")
    if a["library"] != b["library"]:
        raise MixedLibraries(
            f"{_name(a)} is in library {a['library']}, {_name(b)} in {b['library']}: "
            "only people of one library merge"
        )
    lib = a["library"]
    async with db.transaction(lib) as tx:
        clashes = await tx.fetch("photo_clashes", a["id"], b["id"])
        if clashes:
            raise PhotoClash(
                f"{_name(a)} and {_name(b)} both have a face in {len(clashes)} photo(s), and a "
                "person has one face per photo: "
                + "; ".join(
                    f"{display_path(c['library'], c['path'])} (faces {c['face_a']} and "
                    f"{c['face_b']})"
                    for c in clashes[:5]
                )
                + " — `facescan people remove FACE_ID` the wrong one of each first"
            )
        person = dict((await tx.fetch("person_row", b["id"]))[0])
        faces = [list(r) for r in await tx.fetch("person_rows", b["id"])]
        rejections = [r[0] for r in await tx.fetch("person_rejections", b["id"])]
        await tx.fetch("merge_faces", a["id"], b["id"])
        added = [r[0] for r in await tx.fetch("copy_rejections", a["id"], b["id"])]
        await tx.fetch("delete_person", b["id"])
        renamed = a["name"] is None and b["name"] is not None
        if renamed:
            await tx.fetch("name_person", a["id"], b["name"])
        await tx.fetch("refeature", lib)
        result = {
            "into": _name(a),
            "merged": _name(b),
            "name": b["name"] if renamed else a["name"],
            "id": a["id"],
            "library": lib,
            "faces": len(faces),
        }
        summary = f"merged {_name(b)} into {_name(a)} ({len(faces)} faces)"
        undo = {
            "into": a["id"],
            "person": person,
            "faces": faces,
            "rejections": rejections,
            "added_rejections": added,
            "renamed": renamed,
        }
        await log(tx, lib, "merge", summary, undo)
    return result


async def _faces(tx: Tx, faces: Sequence[int]) -> list[Any]:
    """The faces' rows of faces_info; UnknownFace for an id no face has, MixedLibraries
    for faces of several libraries."""
    rows = await tx.fetch("faces_info", sorted(set(faces)))
    missing = sorted(set(faces) - {r["face_id"] for r in rows})
    if missing:
        raise UnknownFace(
            f"no face has id {', '.join(map(str, missing))} (`facescan faces PHOTO --json` "
            "and `facescan people show NAME --json` print face ids)"
        )
    if len({r["library"] for r in rows}) > 1:
        raise MixedLibraries("the faces are in several libraries: give faces of one library")
    return rows


async def library_of_faces(db: PeopleDb, faces: Sequence[int]) -> str:
    rows = await db.fetch("faces_info", sorted(set(faces)))
    if not rows:
        raise UnknownFace(f"no face has id {', '.join(map(str, sorted(set(faces))))}")
    return str(rows[0]["library"])


def _before(rows: Sequence[Any]) -> list[Row]:
    return [
        [
            r["face_id"],
            r["image_id"],
            r["person_id"],
            r["source"],
            r["status"],
            r["distance"],
            r["considered"],
        ]
        for r in rows
    ]


async def move(
    db: PeopleDb, faces: Sequence[int], to: str, library: str | None, *, new: bool = False
) -> dict[str, Any]:
    """The faces become ``to``'s, given by the user (matched, never moved by matching);
    ``new``: ``to`` is a new person of the faces' library, made in the same transaction
    (DuplicatePerson if the name is taken). PhotoClash when two of them share a photo or
    ``to`` has another face of their photo."""
    if new:
        name = check_name(to)
        lib = library or await library_of_faces(db, faces)
        person: Any = {"id": None, "name": name, "library": lib}
    else:
        person = await find(db, to, library)
        lib = person["library"]
    async with db.transaction(lib) as tx:
        rows = await _faces(tx, faces)
        if new:
            person = {**person, "id": await tx.create_person(lib, name, None)}
        if rows[0]["library"] != lib:
            raise MixedLibraries(f"the faces are in library {rows[0]['library']}, {_name(person)}")
        by_image: dict[int, list[Any]] = {}
        for r in rows:
            by_image.setdefault(r["image_id"], []).append(r)
        twice = [group for group in by_image.values() if len(group) > 1]
        if twice:
            g = twice[0]
            raise PhotoClash(
                f"faces {', '.join(str(r['face_id']) for r in g)} are all in "
                f"{display_path(g[0]['library'], g[0]['path'])}: a person has one face per photo"
            )
        held = await tx.fetch("holders_in_images", person["id"], list(by_image))
        others = [h for h in held if h["face_id"] not in {r["face_id"] for r in rows}]
        if others:
            h = others[0]
            r = by_image[h["image_id"]][0]
            raise PhotoClash(
                f"{_name(person)} already has face {h['face_id']} in "
                f"{display_path(r['library'], r['path'])}, and a person has one face per photo: "
                f"`facescan people remove {h['face_id']}` first if it is not theirs"
            )
        before = _before(rows)
        n = len(rows)
        await tx.fetch(
            "set_rows",
            [r["face_id"] for r in rows],
            [r["image_id"] for r in rows],
            [person["id"]] * n,
            ["user"] * n,
            ["matched"] * n,
            [None] * n,
        )
        unrejected = [
            r[0] for r in await tx.fetch("unreject", [r[0] for r in before], [person["id"]] * n)
        ]
        await tx.fetch("refeature", lib)
        summary = f"moved {n} face(s) to {'new person ' if new else ''}{_name(person)}"
        undo = {"person": person["id"], "before": before, "unrejected": unrejected, "new": new}
        await log(tx, lib, "move", summary, undo)
    return {
        "person": _name(person),
        "library": lib,
        "faces": [r[0] for r in before],
        "new": new,
    }


async def feature(db: PeopleDb, name: str, face: int, library: str | None) -> dict[str, Any]:
    """Face ``face`` becomes the face shown for ``name`` (one of theirs: UnknownFace
    otherwise); it stays featured until it is no longer theirs."""
    person = await find(db, name, library)
    async with db.transaction(person["library"]) as tx:
        rows = await _faces(tx, [face])
        if rows[0]["person_id"] != person["id"]:
            raise UnknownFace(
                f"face {face} is not {_name(person)}'s (`facescan people show "
                f"{_name(person)!r} --json` lists their faces; `people move` gives them one)"
            )
        await tx.fetch("set_featured", [person["id"]], [face])
    return {"person": _name(person), "library": person["library"], "featured_face": face}


async def remove(db: PeopleDb, faces: Sequence[int]) -> dict[str, Any]:
    """The faces become nobody's and are marked rejected for their person."""
    lib = await library_of_faces(db, faces)
    async with db.transaction(lib) as tx:
        rows = await _faces(tx, faces)
        nobodys = [r["face_id"] for r in rows if r["person_id"] is None]
        if nobodys:
            raise UnknownFace(f"face {nobodys[0]} is nobody's: there is nothing to remove")
        before = _before(rows)
        n = len(rows)
        await tx.fetch(
            "set_rows",
            [r["face_id"] for r in rows],
            [r["image_id"] for r in rows],
            [None] * n,
            [None] * n,
            [None] * n,
            [None] * n,
        )
        rejected = await tx.fetch(
            "reject", [r["face_id"] for r in rows], [r["person_id"] for r in rows]
        )
        await tx.fetch("refeature", lib)
        people = sorted({display_name(r["person_name"], r["person_id"]) for r in rows})
        summary = f"removed {n} face(s) from {', '.join(people)}"
        undo = {"before": before, "rejected": [[r[0], r[1]] for r in rejected]}
        await log(tx, lib, "remove", summary, undo)
    return {"library": lib, "faces": [r[0] for r in before], "from": people}


async def suggest(db: PeopleDb, name: str, library: str | None, limit: int) -> dict[str, Any]:
    """The people whose reference faces are nearest ``name``'s, nearest first."""
    person = await find(db, name, library)
    async with db.transaction(person["library"]) as tx:
        rows = await tx.fetch(
            "suggest",
            person["id"],
            person["library"],
            SUGGEST_REFERENCES,
            SUGGEST_NEIGHBOURS,
            limit,
        )
    return {
        "person": _name(person),
        "library": person["library"],
        "suggestions": [
            {
                "id": r["id"],
                "name": r["name"],
                "display": _name(r),
                "distance": r["distance"],
                "faces": r["faces"],
            }
            for r in rows
        ],
    }
