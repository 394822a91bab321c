"""The typed errors of /people and /cluster, and the route class that answers them.

Used by ``facescan_api.people_routes`` and ``facescan_api.cluster_routes``: their routes
are :class:`TypedRoute`, which turns the people's errors (facescan_people.errors), the
queue's (the database down, a refused argument) and :class:`Problem` into the API's
:class:`~facescan_api.models.ErrorBody` with the status the table below gives, and a
request that fails validation into 400 invalid_request naming the field. So no bad
request is a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter

from facescan_api.guard import Problem, error_response
from facescan_api.models import ErrorBody, ErrorType
from facescan_people import errors as people
from facescan_queue import errors as queue

PEOPLE_ERRORS: dict[type[people.PeopleError], tuple[int, ErrorType]] = {
    people.UnknownPerson: (404, "not_found"),
    people.UnknownFace: (404, "not_found"),
    people.InvalidCursor: (400, "invalid_cursor"),
    people.InvalidName: (422, "invalid_name"),
    people.DuplicatePerson: (409, "duplicate_person"),
    people.AmbiguousPerson: (409, "ambiguous_person"),
    people.FaceTaken: (409, "face_taken"),
    people.PhotoClash: (409, "photo_clash"),
    people.NothingToUndo: (409, "nothing_to_undo"),
    people.NoFace: (422, "no_face"),
    people.FaceChoiceNeeded: (422, "face_choice_needed"),
    people.SamePerson: (422, "same_person"),
    people.MixedLibraries: (422, "mixed_libraries"),
    people.NotScanned: (409, "not_detected"),
}
"""Each people error's status and type (the first base class found decides)."""


def answer(exc: Exception) -> Response | None:
    """The error answer for one of the errors above; None for any other exception."""
    if isinstance(exc, Problem):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)
    if isinstance(exc, people.PeopleError):
        for kind in type(exc).__mro__:
            if kind in PEOPLE_ERRORS:
                status, error = PEOPLE_ERRORS[kind]
                return error_response(status, error, str(exc))
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, queue.UnknownLibrary):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, queue.InvalidArgument):
        return error_response(400, "invalid_request", str(exc))
    if isinstance(exc, queue.QueueError):
        return error_response(503, "unavailable", f"the database is unavailable: {exc}")
    if isinstance(exc, RequestValidationError):
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response(400, "invalid_request", f"invalid request ({where})")
    return None


class TypedRoute(APIRoute):
    """A route whose typed errors are answered as :func:`answer` says."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def typed(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = answer(exc)
                if response is None:
                    raise
                return response

        return typed


def off_router(prefix: str, what: str) -> APIRouter:
    """Routes that answer every request to ``prefix`` and beneath it with 404 and why:
    ``what`` is off (left out of the OpenAPI document, which shows what is served)."""
    router = APIRouter(include_in_schema=False)
    detail = f"{what} is off: the server needs a database (--dsn, FACESCAN_DSN, --data-dir)"
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]

    @router.api_route(prefix, methods=methods)
    @router.api_route(prefix + "/{rest:path}", methods=methods)
    async def off() -> Response:
        return error_response(404, "not_found", detail)

    return router


def documented(texts: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each an ErrorBody, plus the API key's 401
    and the database's 503 that every route of /people and /cluster may answer."""
    every = {
        401: "No API key, or not one of FACESCAN_API_KEYS (unauthorized).",
        503: "The database is unavailable (unavailable).",
        **texts,
    }
    return {
        status: {"model": ErrorBody, "description": text} for status, text in sorted(every.items())
    }
