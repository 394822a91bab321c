"""Whether the server's database answers, for /health and readiness.

Made by the serve command when a database is configured (--dsn, FACESCAN_DSN or
FACESCAN_DSN_FILE); /detect does not use it yet. Each check opens one short
connection and runs ``SELECT 1``; messages name host:port/database only.
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger("facescan.api.health")


class DatabaseProbe:
    def __init__(self, dsn: str, target: str, *, timeout_s: float = 3.0) -> None:
        self._dsn = dsn
        self.target = target
        """host:port/database: what /health shows."""
        self.timeout_s = timeout_s

    async def reachable(self) -> bool:
        try:
            connection = await asyncpg.connect(dsn=self._dsn, timeout=self.timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("database %s unreachable: %s", self.target, type(exc).__name__)
            return False
        try:
            return bool(await connection.fetchval("SELECT 1", timeout=self.timeout_s) == 1)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        finally:
            await connection.close(timeout=self.timeout_s)
