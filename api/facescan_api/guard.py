"""What every request meets before a route: metrics, the API key, the upload limit.

Added to the app by ``facescan_api.app`` as plain ASGI middleware, so that a request
without a valid key, or with a body over the limit, is refused from its headers,
before its body is read. Answers are the API's typed error bodies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facescan_api.metrics import ApiMetrics
from facescan_api.models import ErrorBody, ErrorType
from facescan_api.settings import key_matches

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
"""Routes that need no API key (the kubelet's probes have none)."""


class Problem(Exception):
    """A request a route refuses: its status, type, message and headers, answered as
    an :class:`ErrorBody` (by the app's handler, or a route class of its own)."""

    def __init__(
        self, status: int, error: ErrorType, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(
    status: int, error: ErrorType, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, status=status, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class UploadTooLarge(HTTPException):
    """Raised while the body streams in, past the limit (no Content-Length said so)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class Guard:
    """API keys (constant-time, every key compared; never logged) and the body limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: tuple[bytes, ...] | None,
        max_body: int,
        open_paths: frozenset[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.keys = keys
        """None: --no-auth."""
        self.max_body = max_body
        self.open_paths = open_paths
        """Served without a key: health, and with --immich Immich's /ping and /predict."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.keys is not None and scope["path"] not in self.open_paths:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key_matches(given.strip().encode(), self.keys):
                detail = "a valid API key is needed: Authorization: Bearer <key>"
                response = error_response(
                    401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            detail = f"the request body ({length} bytes) exceeds {self.max_body} bytes"
            # the body is not read: the connection closes after this answer
            await error_response(413, "upload_too_large", detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise UploadTooLarge(self.max_body)
            return message

        await self.app(scope, limited, send)


class Measure:
    """Counts every answer by route template, method and status, with its latency."""

    def __init__(self, app: ASGIApp, *, metrics: Callable[[], ApiMetrics]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics().observe(template, scope["method"], status, time.monotonic() - started)
