"""The /people routes (an APIRouter): list, show, add from uploaded photos, rename or
hide, merge, undo, over facescan_people.

Included by ``create_app`` (``facescan_api.app``) with the server's queue: served when the
server has a database; otherwise every /people request answers 404 saying so, and the
OpenAPI document leaves them out. Every route needs an API key (``guard``). A person in a URL is
an id (digits) or a name; ``library`` says which library's when names repeat. Errors are
the API's typed bodies (``facescan_api.people_errors``), never a 500 for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile
from fastapi.params import Depends

from facescan_api.guard import Problem
from facescan_api.people_errors import TypedRoute, documented, off_router
from facescan_api.people_models import (
    NAME_PATTERN,
    Merged,
    MergeRequest,
    PeoplePage,
    Person,
    PersonAdded,
    PersonChange,
    PersonSummary,
    Undone,
)
from facescan_api.people_service import (
    MAX_PHOTOS,
    Upload,
    add_from_uploads,
    person_page,
    person_ref,
)
from facescan_api.pool import DetectorPool
from facescan_people import actions, directory
from facescan_people.errors import InvalidCursor
from facescan_people.repository import PeopleDb
from facescan_people.undo import undo as undo_last
from facescan_queue.repository import Queue

Library = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=4096,
        pattern=NAME_PATTERN,
        description="The library (needed where people of one name are in several).",
    ),
]
PersonPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=500,
        pattern=NAME_PATTERN,
        description="The person's id (digits), or their name.",
    ),
]
Cursor = Annotated[
    str | None,
    Query(max_length=2048, description="The `next` of the page before; none: the first."),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many per page.")]

_FOUND = {
    400: "A parameter out of its range, or a cursor no page answered (invalid_request, "
    "invalid_cursor).",
    404: "No such person (not_found).",
    409: "The name is in several libraries: give `library` (ambiguous_person).",
}


def people_router(
    queue: Queue | None, pool: DetectorPool, authorized: Sequence[Depends]
) -> APIRouter:
    """The /people routes over the database of ``queue`` (None: off) and the detector
    ``pool`` (which detects uploaded photos); ``authorized`` documents the API key."""
    if queue is None:
        return off_router("/people", "/people")
    db = PeopleDb(queue)
    router = APIRouter(dependencies=authorized, route_class=TypedRoute, tags=["people"])

    @router.get(
        "/people",
        response_model=PeoplePage,
        responses=documented(
            {
                400: "A parameter out of its range, or a cursor no page answered "
                "(invalid_request, invalid_cursor)."
            }
        ),
        summary="The known people, by name, a page at a time",
    )
    async def list_people(
        library: Library = None, cursor: Cursor = None, limit: Limit = 100, hidden: bool = False
    ) -> PeoplePage:
        """People in name order (unnamed ones last), with how many faces are theirs and
        pending; hidden people only with `hidden=true`."""
        try:
            people, after = await directory.list_people(
                db, library, after=cursor, limit=limit, hidden=hidden
            )
        except InvalidCursor as exc:
            detail = f"cursor {cursor!r} is not a `next` this route answered"
            raise Problem(400, "invalid_cursor", detail) from exc
        return PeoplePage(people=[PersonSummary(**p.as_json()) for p in people], next=after)

    @router.post(
        "/people",
        status_code=201,
        response_model=PersonAdded,
        responses=documented(
            {
                400: f"Not a multipart form with a name, a library and 1 to {MAX_PHOTOS} "
                "non-empty photos (invalid_request).",
                404: "No such library (not_found).",
                409: "The library has a person of that name (duplicate_person); a chosen "
                "face is already someone's, given by the user (face_taken).",
                413: "The body exceeds --max-upload-mb (upload_too_large); a photo over the "
                "decompression bomb guard (image_too_large).",
                415: "A photo in a format the detector does not read (unsupported_image).",
                422: "An empty or invalid name (invalid_name); a photo without a face, or "
                "without the face `face` names (no_face); several faces and no `face` "
                "(face_choice_needed: the detail lists them); a photo that cannot be "
                "decoded in time (undecodable_image, image_timeout); the server's model "
                "makes embeddings the library's cannot be compared with (model_unavailable).",
                503: "The database is unavailable (unavailable); every detector busy (busy) "
                "or lost (worker_lost): Retry-After says when to retry.",
            }
        ),
        summary="Add a person from uploaded photos of them",
    )
    async def add(
        response: Response,
        name: Annotated[str, Form(min_length=1, max_length=500, description="Their name.")],
        library: Annotated[
            str,
            Form(min_length=1, max_length=4096, pattern=NAME_PATTERN, description="Their library."),
        ],
        photos: Annotated[
            list[UploadFile],
            File(description=f"1 to {MAX_PHOTOS} photos of them (JPEG, PNG, HEIC, WebP...)."),
        ],
        face: Annotated[
            list[int] | None,
            Form(
                description="Which face of a photo with several is them, numbered from 1 "
                "left to right: once for every photo, or once per photo in order."
            ),
        ] = None,
    ) -> PersonAdded:
        """Each photo is detected with the library's embedding model and kept in the
        library as `.facescan/uploads/<sha256>` (the same photo uploaded again is the same
        image); its face becomes the person's reference face, and the library's faces
        near it are tagged (or pending), as `facescan people add` does."""
        uploads = [Upload(p.filename or "photo", await p.read()) for p in photos]
        for n, upload in enumerate(uploads, 1):
            if not upload.data:
                raise Problem(400, "invalid_request", f"upload {n} ({upload.filename}) is empty")
        added = await add_from_uploads(queue, pool, name, library, uploads, face or [])
        response.headers["Location"] = f"/people/{added.id}"
        return added

    @router.get(
        "/people/{person}",
        response_model=Person,
        responses=documented(_FOUND),
        summary="A person and a page of their faces",
    )
    async def show(
        person: PersonPath, library: Library = None, cursor: Cursor = None, limit: Limit = 100
    ) -> Person:
        """Their faces, tagged and confirmed first, nearest first: photo, box, distance
        to their nearest reference face, status, source."""
        return await person_page(db, person, library, cursor, limit)

    @router.patch(
        "/people/{person}",
        response_model=Person,
        responses=documented(
            {
                **_FOUND,
                400: "Not a JSON body with name and/or hidden (invalid_request).",
                409: "The library has a person of that name (duplicate_person); the name "
                "is in several libraries: give `library` (ambiguous_person).",
                422: "An empty or invalid name (invalid_name).",
            }
        ),
        summary="Rename a person, hide them or show them again",
    )
    async def change(person: PersonPath, body: PersonChange, library: Library = None) -> Person:
        """A hidden person is left out of GET /people (their faces stay theirs)."""
        found = await directory.find(db, person_ref(person), library)
        ref = f"#{found['id']}"
        if body.name is not None:
            await directory.rename(db, ref, body.name, None)
        if body.hidden is not None:
            await directory.hide(db, ref, None, hidden=body.hidden)
        return await person_page(db, ref, None, None, 100)

    @router.post(
        "/people/{person}/merge",
        response_model=Merged,
        responses=documented(
            {
                **_FOUND,
                400: "Not a JSON body with `other` (invalid_request).",
                404: "No such person, or no such other (not_found).",
                409: "Both have a face in one photo (photo_clash: the detail names them); a "
                "name in several libraries (ambiguous_person).",
                422: "A person merged with themselves (same_person), or people of two "
                "libraries (mixed_libraries).",
            }
        ),
        summary="Merge another person into this one",
    )
    async def merge(person: PersonPath, body: MergeRequest, library: Library = None) -> Merged:
        """The other's faces become this person's and the other is deleted; an unnamed
        person takes the other's name. POST /people/undo undoes it."""
        result = await actions.merge(db, person_ref(person), person_ref(body.other), library)
        return Merged(**result)

    @router.post(
        "/people/undo",
        response_model=Undone,
        responses=documented(
            {
                400: "A parameter out of its range (invalid_request).",
                409: "Nothing left to undo (nothing_to_undo); actions to undo in several "
                "libraries: give `library` (ambiguous_person); a merged person's name "
                "taken again (duplicate_person).",
            }
        ),
        summary="Undo the library's last merge, move or removal",
    )
    async def undo(library: Library = None) -> Undone:
        """Faces changed since are left as they are now (counted as skipped)."""
        return Undone(**await undo_last(db, library))

    return router
