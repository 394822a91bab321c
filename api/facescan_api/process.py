"""The routes POST /process and GET /process/{job_id} (an APIRouter).

Included by ``create_app`` (``facescan_api.app``); ``jobs`` is None when /process is off
(no database or no --media-dir), and then both answer 503 unavailable. Both need an API
key (``guard``). Errors are the API's typed bodies; no bad request is a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Path, Response
from fastapi.params import Depends

from facescan_api.guard import error_response
from facescan_api.job_models import JOB_ID_PATTERN, JobStatus, ProcessRequest
from facescan_api.jobs import JobConflict, Jobs
from facescan_api.media import MediaRefused
from facescan_api.models import ErrorBody
from facescan_queue.errors import QueueError

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Not a JSON body of the documented shape (invalid_request).",
        401: "No API key, or not one of FACESCAN_API_KEYS (unauthorized).",
        403: "media_url's host is not allowed, or callback_url's (--callback-host), or "
        "callback_url is an internal address not listed exactly (url_not_allowed); path "
        "beneath no --path-root, or leading out of it (path_not_allowed).",
        404: "No job with this job_id (not_found).",
        409: "The job_id was submitted before with other content (job_conflict).",
        413: "The media exceeds --max-media-mb (media_too_large).",
        422: "Not an http(s) URL, or a callback_url with credentials (url_not_allowed); "
        "a redirect to another host "
        "(redirect_refused); path cannot be read (media_not_found); callback_url "
        "without FACESCAN_CALLBACK_SECRET (callback_not_configured).",
        503: "/process is off (no database or --media-dir), or the database is down (unavailable).",
    }.items()
}


def process_router(
    jobs: Jobs | None, kick: Callable[[], None], authorized: Sequence[Depends]
) -> APIRouter:
    """The two routes over ``jobs``; ``kick`` tells the dispatcher a job was queued;
    ``authorized`` documents the API key (the app's, enforced by ``guard``)."""
    router = APIRouter(dependencies=authorized)

    @router.post(
        "/process",
        status_code=202,
        response_model=JobStatus,
        responses=_ERRORS,
        summary="Queue one image; its result is POSTed to callback_url, signed",
    )
    async def process(request: ProcessRequest, response: Response) -> JobStatus | Response:
        """Registers the media as an image of the API library (retried, leased and never
        lost like any other). Submitting a job_id again with the same content answers
        the existing job."""
        if jobs is None:
            return _off()
        try:
            status = await jobs.submit(request)
        except MediaRefused as exc:
            return error_response(exc.status, exc.error, exc.detail)
        except JobConflict as exc:
            return error_response(409, "job_conflict", str(exc))
        except QueueError as exc:
            return error_response(503, "unavailable", f"the database is unavailable: {exc}")
        kick()
        response.headers["Location"] = f"/process/{status.job_id}"
        return status

    @router.get(
        "/process/{job_id}",
        response_model=JobStatus,
        responses=_ERRORS,
        summary="A job's state and, once settled, the callback's result",
    )
    async def job(job_id: str = Path(pattern=JOB_ID_PATTERN)) -> JobStatus | Response:
        if jobs is None:
            return _off()
        try:
            status = await jobs.status(job_id)
        except QueueError as exc:
            return error_response(503, "unavailable", f"the database is unavailable: {exc}")
        if status is None:
            return error_response(404, "not_found", f"no job {job_id!r}")
        return status

    return router


def _off() -> Response:
    return error_response(
        503,
        "unavailable",
        "/process is off: the server needs a database (--dsn, FACESCAN_DSN) and --media-dir",
    )
