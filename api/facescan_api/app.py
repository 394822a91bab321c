"""The ASGI app of ``facescan serve``: its routes, errors and OpenAPI document.

``create_app`` is called by the serve command (``facescan_api.serve``) with a started
worker pool and, when a database is configured, its probe; tests call it the same way.
Routes: POST /detect, POST /process and GET /process/{job_id} (``process``), /people
(``people_routes``) and POST /cluster (``cluster_routes``) with a database, Immich's
/ping and /predict with --immich (``immich``), GET /health, /health/live,
/health/ready, /metrics and /openapi.json; every route but health (and Immich's) needs
an API key (``guard``). Every error answer is an
:class:`~facescan_api.models.ErrorBody`; a bad upload is a 4xx, never a 500.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, Response, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException

from facescan_api.cluster_routes import cluster_router
from facescan_api.guard import OPEN_PATHS, Guard, Measure, Problem, error_response
from facescan_api.health import DatabaseProbe
from facescan_api.immich import IMMICH_PATHS, immich_router
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
from facescan_api.people_routes import people_router
from facescan_api.pool import DetectorPool
from facescan_api.process import process_router
from facescan_api.uploads import detect as detect_upload
from facescan_api.work import Detected
from facescan_queue.repository import Queue

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


def create_app(
    pool: DetectorPool,
    *,
    keys: tuple[bytes, ...] | None,
    max_upload_bytes: int,
    database: DatabaseProbe | None = None,
    queue: Queue | None = None,
    jobs: Jobs | None = None,
    kick: Callable[[], None] = lambda: None,
    immich: bool = False,
    collectors: Sequence[Collector] = (),
) -> FastAPI:
    """The app over a started ``pool``; ``keys`` None serves without authentication;
    ``queue`` None (no database): /people and /cluster are off; ``jobs`` None: /process
    is off; ``collectors`` join /metrics (/process's)."""
    app = FastAPI(
        title="facescan",
        version=version("facescan"),
        description="Finds the faces in an uploaded photo with facescan's detector, or in "
        "a photo by URL or path through facescan's queue, with a signed callback; names "
        "and clusters them with facescan's people.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the API key
    )
    metrics = ApiMetrics(pool.stats)
    for collector in collectors:
        metrics.registry.register(collector)
    open_paths = OPEN_PATHS | (IMMICH_PATHS if immich else frozenset())
    app.add_middleware(Guard, keys=keys, max_body=max_upload_bytes, open_paths=open_paths)
    app.add_middleware(Measure, metrics=lambda: metrics)
    _handlers(app)
    app.include_router(process_router(jobs, kick, Authorized))
    app.include_router(immich_router(pool, metrics.rejected.inc, on=immich))
    app.include_router(people_router(queue, pool, Authorized))
    app.include_router(cluster_router(queue, Authorized))

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
            raise Problem(400, "invalid_request", "the `image` file is empty")
        outcome, _ = await detect_upload(pool, data, on_busy=metrics.rejected.inc)
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
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text"},
            401: _ERRORS[401],
        },
    )
    async def prometheus() -> Response:
        """Requests by route and status, latency histograms, pool saturation."""
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", dependencies=Authorized, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def api_error(_: Request, exc: Problem) -> JSONResponse:
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
