"""The ASGI app of ``facescan serve``: its routes, errors and OpenAPI document.

``create_app`` is called by the serve command (``facescan_api.serve``) with a started
worker pool and, when a database is configured, its probe; tests call it the same way.
Routes: POST /detect, POST /process and GET /process/{job_id} (``process``; every route
but health needs an API key: ``guard``), GET /health,
/health/live, /health/ready, /metrics and /openapi.json. Every error answer is an
:class:`~facescan_api.models.ErrorBody`; a bad upload is a 4xx, never a 500.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, Response, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from facescan_api.guard import Guard, Measure, error_response
from facescan_api.health import DatabaseProbe
from facescan_api.jobs import Jobs
from facescan_api.metrics import ApiMetrics
from facescan_api.models import (
    Box,
    DatabaseHealth,
    DetectResponse,
    Embedding,
    ErrorBody,
    ErrorType,
    Face,
    Health,
    ImageSize,
    Liveness,
    PoolHealth,
)
from facescan_api.pool import Busy, DetectorPool, UploadTimeout, WorkerLost
from facescan_api.process import process_router
from facescan_api.work import Detected

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Not a multipart form with one non-empty `image` file (invalid_request).",
        401: "No API key, or not one of FACESCAN_API_KEYS (unauthorized).",
        413: "Body over --max-upload-mb (upload_too_large); image over the decompression "
        "bomb guard, or memory ran out at every cascade step (image_too_large).",
        415: "Not an image format the detector reads (unsupported_image).",
        422: "A known format that cannot be decoded: corrupt, truncated "
        "(undecodable_image); decoding and detection past --timeout (image_timeout).",
        503: "Every worker busy and the queue full (busy), or the worker died "
        "(worker_lost): Retry-After says when to retry.",
    }.items()
}
_STATUS_ERRORS: dict[int, ErrorType] = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
}
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key of FACESCAN_API_KEYS (checked before the body is read).",
)
Authorized = [Security(_bearer)]
"""Documents the key in OpenAPI; ``guard.Guard`` enforces it for every route but health."""


class ApiError(Exception):
    def __init__(
        self, status: int, error: ErrorType, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def create_app(
    pool: DetectorPool,
    *,
    keys: tuple[bytes, ...] | None,
    max_upload_bytes: int,
    database: DatabaseProbe | None = None,
    jobs: Jobs | None = None,
    kick: Callable[[], None] = lambda: None,
) -> FastAPI:
    """The app over a started ``pool``; ``keys`` None serves without authentication;
    ``jobs`` None: /process is off."""
    app = FastAPI(
        title="facescan",
        version=version("facescan"),
        description="Finds the faces in an uploaded photo with facescan's detector, or in "
        "a photo by URL or path through facescan's queue, with a signed callback.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the API key
    )
    metrics = ApiMetrics(pool.stats)
    app.add_middleware(Guard, keys=keys, max_body=max_upload_bytes)
    app.add_middleware(Measure, metrics=lambda: metrics)
    _handlers(app)
    app.include_router(process_router(jobs, kick, Authorized))

    @app.post(
        "/detect",
        response_model=DetectResponse,
        responses=_ERRORS,
        dependencies=Authorized,
        summary="Find the faces in one image",
    )
    async def detect(
        image: Annotated[UploadFile, File(description="The photo (JPEG, PNG, HEIC, WebP...).")],
    ) -> DetectResponse:
        started = time.monotonic()
        data = await image.read()
        if not data:
            raise ApiError(400, "invalid_request", "the `image` file is empty")
        try:
            outcome = await pool.detect(data)
        except Busy as exc:
            metrics.rejected.inc()
            raise ApiError(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)}) from exc
        except UploadTimeout as exc:
            raise ApiError(422, "image_timeout", str(exc)) from exc
        except WorkerLost as exc:
            retry = {"Retry-After": str(pool.retry_after())}
            raise ApiError(503, "worker_lost", str(exc), retry) from exc
        if not isinstance(outcome, Detected):
            raise ApiError(outcome.status, outcome.error, outcome.detail)
        return _response(outcome, round((time.monotonic() - started) * 1000))

    async def health_report() -> tuple[Health, bool]:
        stats = pool.stats()
        reachable = await database.reachable() if database is not None else None
        ready = stats.ready == stats.workers and reachable is not False
        report = Health(
            status="ok" if ready else "unavailable",
            live=True,
            ready=ready,
            version=version("facescan"),
            model=pool.config.model,
            models_loaded=list(stats.models),
            gpu_available=stats.gpu_available,
            pool=PoolHealth(
                workers=stats.workers,
                ready=stats.ready,
                busy=stats.busy,
                waiting=stats.waiting,
                capacity=stats.capacity,
            ),
            database=DatabaseHealth(
                configured=database is not None,
                reachable=reachable,
                target=database.target if database is not None else None,
            ),
        )
        return report, ready

    health_responses: dict[int | str, dict[str, Any]] = {
        503: {"model": Health, "description": "Not ready: a worker or the database is down."}
    }

    @app.get("/health", response_model=Health, responses=health_responses)
    async def health(response: Response) -> Health:
        """Status, version, models loaded, GPU, pool and database; 503 when not ready."""
        report, ready = await health_report()
        response.status_code = 200 if ready else 503
        return report

    @app.get("/health/ready", response_model=Health, responses=health_responses)
    async def ready(response: Response) -> Health:
        """Readiness: every worker has its model, and the database (if any) answers."""
        report, is_ready = await health_report()
        response.status_code = 200 if is_ready else 503
        return report

    @app.get("/health/live", response_model=Liveness)
    async def live() -> Liveness:
        """Liveness: the server answers (the database is not asked)."""
        return Liveness(status="ok")

    @app.get(
        "/metrics",
        dependencies=Authorized,
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def prometheus() -> Response:
        """Requests by route and status, latency histograms, pool saturation."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", dependencies=Authorized, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        error = _STATUS_ERRORS.get(exc.status_code, "invalid_request")
        return error_response(exc.status_code, error, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        detail = f"expected a multipart/form-data body with an `image` file ({where})"
        if request.url.path.startswith("/process"):
            detail = f"invalid job ({where})"
        return error_response(400, "invalid_request", detail)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")


def _response(outcome: Detected, processing_ms: int) -> DetectResponse:
    faces = [
        Face(
            box=Box(top=f.top, right=f.right, bottom=f.bottom, left=f.left),
            score=f.score,
            landmarks=list(f.landmarks),
            embedding=Embedding(model=outcome.embedding_model, vector=list(f.embedding)),
        )
        for f in outcome.faces
    ]
    return DetectResponse(
        faces=faces,
        image=ImageSize(width=outcome.width, height=outcome.height),
        model=outcome.model,
        scale=outcome.scale,
        degraded=outcome.degraded,
        processing_ms=processing_ms,
    )
