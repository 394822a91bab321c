"""Helpers of the /process tests: a callback receiver that checks signatures and can fail
its first deliveries, a media origin serving files (and redirects, errors), and the
server started with /process on. All real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from facescan_api.callbacks import SIGNATURE_HEADER, verify
from tests.integration.api.support import KEYS, ApiServer, server_env

SECRET = "callback-secret-3d9e1b"
AUTH = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    status: int
    signed: bool

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers ``fail_first`` deliveries with 503 (or ``fail_status``), then 200;
    records every one."""

    fail_first: int = 0
    fail_status: int = 503
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def acknowledged(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.status == 200]

    def wait(self, count: int, timeout_s: float = 120) -> list[Delivery]:
        """The deliveries, once ``count`` were acknowledged."""
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.acknowledged())} acknowledged: {self.deliveries}")
            time.sleep(0.1)
        with self.lock:
            return list(self.deliveries)

    def handle(self, request: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        body = request.rfile.read(int(request.headers.get("Content-Length", "0")))
        signed = verify(SECRET.encode(), body, request.headers.get(SIGNATURE_HEADER, ""))
        with self.lock:
            failed = sum(1 for d in self.deliveries if d.status != 200)
            status = self.fail_status if failed < self.fail_first else 200
            self.deliveries.append(Delivery(body, dict(request.headers), status, signed))
        return status, b"ok", {}


Route = Callable[[BaseHTTPRequestHandler], tuple[int, bytes, dict[str, str]]]


@contextmanager
def http_server(
    routes: Mapping[str, Route], *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """A threading HTTP server on 127.0.0.1 answering GET and POST by path; its base URL
    (https with ``tls``, the server's certificate; ``host`` names it in the URL)."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            route = routes.get(self.path)
            status, body, headers = route(self) if route else (404, b"not found", {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def file_route(path: Path) -> Route:
    return lambda _: (200, path.read_bytes(), {"Content-Type": "application/octet-stream"})


def process_server(
    dsn: str,
    media: Path,
    log: Path,
    *,
    roots: tuple[Path, ...] = (),
    secret: str | None = SECRET,
    callback_hosts: tuple[str, ...] = ("127.0.0.1",),
    extra: tuple[str, ...] = (),
) -> ApiServer:
    """``facescan-detector serve`` with /process on: the database, the media dir, media
    host 127.0.0.1 allowed, callbacks to ``callback_hosts``, retried after 0.2 s,
    0.4 s, ..."""
    env = server_env(
        FACESCAN_API_KEYS=",".join(KEYS),
        FACESCAN_DSN=dsn,
        FACESCAN_CALLBACK_BACKOFF_S="0.2",
        FACESCAN_POLL_S="0.2",
        **({"FACESCAN_CALLBACK_SECRET": secret} if secret else {}),
    )
    args = ["--media-dir", str(media), "--allow-host", "127.0.0.1", "--threads", "1", "-v"]
    for root in roots:
        args += ["--path-root", str(root)]
    for host in callback_hosts:
        args += ["--callback-host", host]
    return ApiServer([*args, *extra], env, log)


def submit(server: ApiServer, job: Mapping[str, Any], *, key: bool = True) -> Any:
    headers = AUTH if key else {"Content-Type": "application/json"}
    return server.request("POST", "/process", json.dumps(job).encode(), headers, timeout=60)


def job_status(server: ApiServer, job_id: str) -> Any:
    return server.request("GET", f"/process/{job_id}", headers=AUTH, timeout=30)


def wait_settled(server: ApiServer, job_id: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = job_status(server, job_id).json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not settled: {body}\n{server.output()}")
