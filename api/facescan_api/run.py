"""Runs one API server: binds the port, starts the worker pool (models loaded) and, with
a database and --media-dir, /process (``process_service``), serves with uvicorn until
SIGTERM or Ctrl-C, then stops them.

Called by ``facescan_api.serve.main`` once the settings passed their checks. The
socket is bound before the models load, so a port in use fails at once; connections
wait in its backlog until the workers are ready.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from facescan_api.app import create_app
from facescan_api.health import DatabaseProbe
from facescan_api.pool import DetectorPool
from facescan_api.process_service import CannotStart, connected, process_service
from facescan_api.settings import ServeSettings
from facescan_api.work import WorkerConfig
from facescan_detector.backends.hardware import usable_cpus
from facescan_detector.errors import StartupError

log = logging.getLogger("facescan.api")

EXIT_STARTUP = 2


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM and SIGINT end it gracefully and are not
    raised again afterwards (uvicorn's own does, which would skip stopping the workers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when the host is one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP,
    # and accepted ones inherit it (with 0, Nagle held each answer's body back behind
    # its headers for the client's delayed ACK: ~40 ms per request on a kept-alive
    # connection)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def serve(
    settings: ServeSettings, dsn: str | None, target: str | None, *, verbose: bool
) -> int:
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"facescan serve: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_STARTUP
    config = WorkerConfig(
        model=settings.model,
        upsample=settings.hog_upsample,
        threads=settings.threads or max(1, usable_cpus() // settings.workers),
        model_dir=settings.model_dir,
        max_dimension=settings.max_dimension,
    )
    pool = DetectorPool(
        config,
        workers=settings.workers,
        queue=settings.queue_size(),
        timeout_s=settings.image_timeout_s,
    )
    try:
        try:
            await pool.start()
        except StartupError as exc:
            print(f"facescan serve: the detector cannot start: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        probe = DatabaseProbe(dsn, target or "") if dsn else None
        async with (
            connected(dsn, required=settings.media_dir is not None) as queue,
            process_service(settings, queue, dsn, threads=config.threads) as service,
        ):
            app = create_app(
                pool,
                keys=None if settings.no_auth else settings.keys(),
                max_upload_bytes=settings.max_upload_bytes(),
                database=probe,
                queue=queue,
                jobs=service.jobs if service else None,
                kick=service.kick if service else lambda: None,
                immich=settings.immich,
                collectors=service.collectors if service else (),
            )
            await _serve(app, sock, settings, verbose=verbose, process=service is not None)
        return 0
    except CannotStart as exc:
        print(f"facescan serve: /process cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    finally:
        pool.close()
        sock.close()


async def _serve(
    app: FastAPI, sock: socket.socket, settings: ServeSettings, *, verbose: bool, process: bool
) -> None:
    server = _Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_level="info" if verbose else "warning",
            access_log=verbose,
            server_header=False,
            timeout_graceful_shutdown=30,
        )
    )
    scheme_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(
        f"facescan serve: http://{scheme_host}:{settings.port} ({settings.workers} "
        f"{settings.model} worker(s), queue {settings.queue_size()}, "
        f"{'no authentication' if settings.no_auth else 'API keys required'}; "
        f"/process {'on, library ' + settings.api_library if process else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    await server.serve(sockets=[sock])
