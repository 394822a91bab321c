"""What the /people routes do beyond facescan_people's calls: a person made from uploaded
photos, a person named in a URL, and a person with a page of their faces.

Called by ``facescan_api.people_routes``. Adding a person from uploads is `people add`
with photos that were never scanned: each upload is detected by the API's worker pool
with the library's embedding model, kept as an image of the library
(``facescan_api.uploads``), its face chosen as `people add --face` chooses, then
facescan_people.enrol.add_person makes the person and matches the faces near them (the
faces nobody has, and those pending for someone farther), as the CLI does. When the
person is refused (a name taken meanwhile, a face the user gave someone else) the photos
this request kept are taken back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facescan_api.guard import Problem
from facescan_api.models import Box
from facescan_api.people_models import Person, PersonAdded, PersonFace
from facescan_api.pool import DetectorPool
from facescan_api.uploads import StoredFace, detect, drop, library_embedding, store
from facescan_people import directory
from facescan_people.enrol import Reference, add_person, check_name
from facescan_people.errors import (
    DuplicatePerson,
    FaceChoiceNeeded,
    NoFace,
    PeopleError,
    UnknownPerson,
)
from facescan_people.repository import PeopleDb
from facescan_queue.errors import QueueError
from facescan_queue.repository import Queue

MAX_PHOTOS = 10
"""Photos one POST /people may upload."""
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def person_ref(person: str) -> str:
    """The person a URL names, as facescan_people.directory.find takes them: digits are
    an id ("#12"), anything else a name."""
    if person.isascii() and person.isdigit():
        if int(person) > MAX_ID:
            raise UnknownPerson(f"no person has id {person}")
        return f"#{int(person)}"
    return person


def encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"faces:{offset}".encode()).decode().rstrip("=")


def decode_offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, offset = raw.partition(":")
        if kind == "faces" and offset.isascii() and offset.isdigit():
            return int(offset)
    except (binascii.Error, ValueError):
        pass
    raise Problem(400, "invalid_cursor", f"cursor {cursor!r} is not a `next` this route answered")


async def person_page(
    db: PeopleDb, person: str, library: str | None, cursor: str | None, limit: int
) -> Person:
    """The person with ``limit`` of their faces from ``cursor``."""
    offset = decode_offset(cursor)
    shown = await directory.show(db, person_ref(person), library)
    return _page(shown, offset, limit)


def _page(shown: dict[str, Any], offset: int, limit: int) -> Person:
    faces = shown["faces"]
    page = faces[offset : offset + limit]
    pending = sum(f["status"] == "pending" for f in faces)
    return Person(
        id=shown["id"],
        name=shown["name"],
        display=shown["display"],
        library=shown["library"],
        hidden=shown["hidden"],
        matched=len(faces) - pending,
        pending=pending,
        featured_face=shown.get("featured_face"),
        faces=[
            PersonFace(
                face_id=f["face_id"],
                path=f["path"],
                box=Box(top=f["top"], right=f["right"], bottom=f["bottom"], left=f["left"]),
                distance=f["distance"],
                status=f["status"],
                source=f["source"],
            )
            for f in page
        ],
        next=encode_offset(offset + limit) if offset + limit < len(faces) else None,
    )


def choose(
    faces: Sequence[StoredFace], i: int, given: Sequence[int], photos: int, name: str
) -> int:
    """The index of the face of upload ``i`` that is the person, as `people add --face`
    chooses: ``given`` once per photo, or once (for every photo with several faces)."""
    label = f"upload {i + 1} ({name})"
    if not faces:
        raise NoFace(f"no face was found in {label}: upload a photo of the person's face")
    if len(given) == photos:
        wanted = given[i]
    elif given and len(faces) > 1:
        wanted = given[0]
    elif len(faces) == 1:
        wanted = 1
    else:
        raise FaceChoiceNeeded(
            f"{label} has {len(faces)} faces: say which is the person with `face` (1 to "
            f"{len(faces)}, left to right): {_listing(faces)}"
        )
    if not 1 <= wanted <= len(faces):
        raise NoFace(f"{label} has {len(faces)} face(s), no face {wanted}: {_listing(faces)}")
    return wanted - 1


def _listing(faces: Sequence[StoredFace]) -> str:
    return "; ".join(
        f"{n}: top {f.box[0]} right {f.box[1]} bottom {f.box[2]} left {f.box[3]}"
        for n, f in enumerate(faces, 1)
    )


async def add_from_uploads(
    queue: Queue,
    pool: DetectorPool,
    name: str,
    library: str,
    uploads: Sequence[Upload],
    given: Sequence[int],
) -> PersonAdded:
    """Makes the person ``name`` of ``library`` from the uploaded photos."""
    db = PeopleDb(queue)
    name = check_name(name)
    if not 1 <= len(uploads) <= MAX_PHOTOS:
        raise Problem(400, "invalid_request", f"upload 1 to {MAX_PHOTOS} photos")
    if len(given) not in (0, 1, len(uploads)):
        raise NoFace(f"give `face` once, or once per photo ({len(uploads)}), not {len(given)}")
    embedding = await library_embedding(queue, library)
    if await db.fetch("people_named", name, library):
        raise DuplicatePerson(f"there is already a person called {name!r} in library {library}")
    found = []
    for i, upload in enumerate(uploads):
        detected, ms = await detect(pool, upload.data, f"upload {i + 1} ({upload.filename})")
        if detected.embedding_model != embedding:
            raise Problem(
                422,
                "model_unavailable",
                f"library {library}'s faces have {embedding} embeddings; this server's "
                f"detector ({detected.model}) makes {detected.embedding_model} ones, which "
                "cannot be compared with them",
            )
        boxes = sorted(detected.faces, key=lambda f: (f.left, f.top))
        listed = [StoredFace(0, (f.top, f.right, f.bottom, f.left)) for f in boxes]
        choose(listed, i, given, len(uploads), upload.filename)  # refused before any write
        found.append((detected, ms))
    kept = []
    try:
        references = []
        for i, (upload, (detected, ms)) in enumerate(zip(uploads, found, strict=True)):
            photo = await store(
                queue, library, upload.data, detected, pool.config.max_dimension, ms
            )
            kept.append(photo)
            face = photo.faces[choose(photo.faces, i, given, len(uploads), upload.filename)]
            references.append(
                Reference(face.face_id, photo.image_id, f"upload {i + 1} ({upload.filename})")
            )
        enrolled = await add_person(db, library, name, references)
    except (PeopleError, Problem):
        with contextlib.suppress(QueueError):
            await drop(queue, library, kept)
        raise
    shown = await directory.show(db, name, library)
    page = _page(shown, 0, 100)
    return PersonAdded(
        **page.model_dump(),
        references=enrolled.references,
        tagged=enrolled.matched - enrolled.references,
    )
