"""Reading and naming the known people: list (cursor-paged), show, rename, hide, and the
faces of one image with their people (and their face ids, which `people move` and
`people remove` take). A person is named by their name or, unnamed (made by `people
cluster`), by "#<id>" or "unnamed #<id>".

Called by the `facescan people` commands and by `facescan faces` (each face's person).
Writes here are single statements; matching's writes are facescan_people.sync's and
facescan_people.enrol's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import PurePosixPath
from typing import Any

import asyncpg

from facescan_people.enrol import check_name
from facescan_people.errors import AmbiguousPerson, InvalidCursor, UnknownPerson
from facescan_people.models import Person, display_name
from facescan_people.repository import PeopleDb
from facescan_queue.errors import PermissionDenied
from facescan_queue.repository import Queue

Box = tuple[int, int, int, int]
"""top, right, bottom, left in original pixels."""

NOBODY: dict[str, Any] = {"person": None, "distance": None, "status": None}
"""What `facescan faces` shows for a face nobody has (or unknown to this role)."""

BY_ID = re.compile(r"^(?:unnamed )?#(\d+)$")
"""A person named by id: "#12" or "unnamed #12" (what listings show for unnamed people)."""


def display_path(library: str, path: str) -> str:
    """An image's path as the user names it: absolute under a library named by its root
    directory (what `facescan scan` makes), else relative to the library."""
    return str(PurePosixPath(library) / path) if library.startswith("/") else path


def encode_cursor(person: Person) -> str:
    """The --after value that continues a listing after this person."""
    key = [person.name is None, person.name or "", person.library, person.id]
    raw = json.dumps(key, ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[bool, str, str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        unnamed, name, library, person = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(
            f"--after {cursor!r} is not a value a listing printed (its `next` field)"
        ) from exc
    if not (
        isinstance(unnamed, bool)
        and isinstance(name, str)
        and isinstance(library, str)
        and isinstance(person, int)
    ):
        raise InvalidCursor(f"--after {cursor!r} is not a value a listing printed")
    return unnamed, name, library, person


async def find(db: PeopleDb, name: str, library: str | None) -> asyncpg.Record:
    """The person called ``name`` (in ``library``, or the one library that has one), or
    the person of that id ("#12", "unnamed #12")."""
    by_id = BY_ID.match(name.strip())
    if by_id:
        rows = await db.fetch("person_by_id", int(by_id.group(1)), library)
    else:
        rows = await db.fetch("people_named", name.strip(), library)
    if not rows:
        where = f" in library {library}" if library else ""
        raise UnknownPerson(f"no person called {name!r}{where} (`facescan people list` lists them)")
    if len(rows) > 1:
        libraries = ", ".join(r["library"] for r in rows)
        raise AmbiguousPerson(
            f"people called {name!r} are in several libraries ({libraries}): say which "
            "with --library"
        )
    return rows[0]


async def list_people(
    db: PeopleDb,
    library: str | None,
    *,
    after: str | None = None,
    limit: int = 100,
    hidden: bool = False,
) -> tuple[list[Person], str | None]:
    """A page of people in name order, and the cursor of the next page (None: last)."""
    unnamed, name, lib, person = decode_cursor(after) if after else (False, "", "", 0)
    rows = await db.fetch("list_people", library, hidden, unnamed, name, lib, person, limit + 1)
    people = [
        Person(
            r["id"],
            r["library"],
            r["name"],
            r["hidden"],
            r["matched"],
            r["pending"],
            r["created_at"],
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return people, encode_cursor(people[-1]) if more else None


async def show(db: PeopleDb, name: str, library: str | None) -> dict[str, Any]:
    """A person and their faces: image path, box, distance, status, source."""
    person = await find(db, name, library)
    faces = [
        {
            "face_id": r["face_id"],
            "path": display_path(r["library"], r["path"]),
            "top": r["box_top"],
            "right": r["box_right"],
            "bottom": r["box_bottom"],
            "left": r["box_left"],
            "distance": r["distance"],
            "status": r["status"],
            "source": r["source"],
        }
        for r in await db.fetch("person_faces", person["id"])
    ]
    return {
        "id": person["id"],
        "name": person["name"],
        "display": display_name(person["name"], person["id"]),
        "library": person["library"],
        "hidden": person["hidden"],
        "featured_face": person["featured_face"],
        "faces": faces,
    }


async def rename(db: PeopleDb, old: str, new: str, library: str | None) -> str:
    """Renames a person; DuplicatePerson when the library has someone called ``new``."""
    person = await find(db, old, library)
    new = check_name(new)
    await db.execute("rename_person", person["id"], new)
    return new


async def hide(db: PeopleDb, name: str, library: str | None, *, hidden: bool = True) -> None:
    """Hides a person from `people list` (their faces stay theirs), or shows them again."""
    person = await find(db, name, library)
    await db.execute("hide_person", person["id"], hidden)


async def faces_of_image(db: PeopleDb, image_id: int) -> list[asyncpg.Record]:
    """The faces of one image in `facescan faces` order, each with its person (if any)."""
    return await db.fetch("faces_of_image", image_id)


async def image_people(queue: Queue, image_id: int) -> dict[Box, dict[str, Any]]:
    """Each face of an image by its box: its face id, and its person, distance, status
    (None when nobody's), for `facescan faces`. Empty for a role granted libraries only,
    which may not read the people's tables (`facescan db grant` gives none)."""
    try:
        rows = await faces_of_image(PeopleDb(queue), image_id)
    except PermissionDenied:
        return {}
    return {
        (r["box_top"], r["box_right"], r["box_bottom"], r["box_left"]): {
            "face_id": r["face_id"],
            "person": r["person"],
            "distance": r["distance"],
            "status": r["status"],
        }
        for r in rows
    }
