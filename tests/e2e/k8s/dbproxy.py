"""The test database as a network service: a TCP listener on 127.0.0.1 that forwards each
connection to the embedded PostgreSQL's unix socket.

Pods reach a cluster's PostgreSQL over TCP (`postgresql://user@host:port/db` in the
database Secret); the embedded server of the tests listens on a unix socket inside a
folder only root may enter, which a detector running as uid 10001 cannot. Started once per
test process by the e2e fixtures, in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import parse_qs, urlsplit


class DatabaseProxy:
    def __init__(self, socket_dir: str) -> None:
        self.socket = f"{socket_dir}/.s.PGSQL.5432"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="db-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    @classmethod
    def for_dsn(cls, dsn: str) -> DatabaseProxy:
        """A proxy to the unix socket named by a `postgresql://u:@/db?host=DIR` DSN."""
        return cls(parse_qs(urlsplit(dsn).query)["host"][0])

    def start(self) -> DatabaseProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(10)
        return self

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def tcp_dsn(self, dsn: str) -> str:
        """The same database over TCP: postgresql://USER@127.0.0.1:PORT/DB."""
        parts = urlsplit(dsn)
        return f"postgresql://{parts.username}@127.0.0.1:{self.port}{parts.path}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(self.socket)
        except OSError:
            client_w.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
