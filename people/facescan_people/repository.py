"""The people's client of the database: one method per named query of queries.sql.

Used by facescan_people.sync, .enrol and .directory over the connection pool of the
queue's client (facescan_queue.repository.Queue.pool). Writers of a library's matches
work in :meth:`PeopleDb.transaction`, which holds the library's advisory lock until
commit, so that a sync and a `people add` never interleave. Driver errors become the
queue's typed errors (facescan_queue.errors), as everywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from facescan_people.errors import DuplicatePerson
from facescan_people.models import Assignment, Candidate, Holder, Kind, Source, Thresholds
from facescan_people.queries import query
from facescan_queue import errors
from facescan_queue.repository import Queue

MAX_SCAN_TUPLES = 20_000
"""Index entries an HNSW scan may visit to fill its LIMIT (pgvector's default)."""


class Tx:
    """One transaction of a library's matching, on one connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of one named query, in this transaction."""
        return list(await self._conn.fetch(query(name), *args))

    async def fetchval(self, name: str, *args: Any) -> Any:
        """The first value of one named query, in this transaction."""
        return await self._conn.fetchval(query(name), *args)

    async def thresholds(self, library: str) -> Thresholds:
        return Thresholds.from_row(await self._conn.fetchrow(query("settings"), library))

    async def people_count(self, library: str) -> int:
        return int(await self._conn.fetchval(query("people_count"), library))

    async def new_faces(self, library: str, after: int, limit: int) -> list[tuple[int, int]]:
        """(face, image) of faces new to matching, in id order after face ``after``."""
        rows = await self._conn.fetch(query("new_faces"), library, after, limit)
        return [(r[0], r[1]) for r in rows]

    async def nearest_references(
        self, library: str, faces: Sequence[int], k: int
    ) -> list[Candidate]:
        rows = await self._conn.fetch(query("nearest_references"), list(faces), library, k)
        return [
            Candidate(r["face_id"], r["image_id"], r["person_id"], Kind(r["kind"]), r["distance"])
            for r in rows
        ]

    async def nearest_faces(self, face_id: int, limit: int) -> list[asyncpg.Record]:
        return list(await self._conn.fetch(query("nearest_faces"), face_id, limit))

    async def assignments_of(self, faces: Sequence[int]) -> list[asyncpg.Record]:
        """(face_id, person, source) of those of the faces that someone has."""
        return list(await self._conn.fetch(query("assignments_of"), list(faces)))

    async def holders(self, keys: Sequence[tuple[int, int]]) -> list[Holder]:
        rows = await self._conn.fetch(query("holders"), [p for p, _ in keys], [i for _, i in keys])
        return [
            Holder(r["face_id"], r["image_id"], r["person_id"], Source(r["source"]), r["distance"])
            for r in rows
        ]

    async def unassign(self, faces: Sequence[int]) -> None:
        if faces:
            await self._conn.execute(query("unassign"), list(faces))

    async def record(
        self, assignments: Sequence[Assignment], nobody: Sequence[tuple[int, int]] = ()
    ) -> None:
        """Writes automatic matches, and (face, image) pairs considered and nobody's."""
        rows: list[tuple[Any, ...]] = [
            (a.face_id, a.image_id, a.person_id, Source.AUTOMATIC, a.status, a.distance)
            for a in assignments
        ]
        rows += [(face, image, None, None, None, None) for face, image in nobody]
        await self._record(rows)

    async def record_user(self, person_id: int, faces: Sequence[tuple[int, int]]) -> None:
        """The faces (face, image) the user gave the person: matched, source user."""
        await self._record([(f, i, person_id, Source.USER, "matched", None) for f, i in faces])

    async def _record(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            columns = list(zip(*rows, strict=True))
            await self._conn.execute(query("record"), *(list(c) for c in columns))

    async def create_person(self, library: str, name: str, featured_face: int | None) -> int:
        try:
            async with self._conn.transaction():  # a savepoint: the error leaves the rest
                return int(
                    await self._conn.fetchval(query("create_person"), library, name, featured_face)
                )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicatePerson(
                f"there is already a person called {name!r} in library {library}"
            ) from exc


class PeopleDb:
    """The people's tables of one database, through the queue's connection pool."""

    def __init__(self, queue: Queue) -> None:
        self._pool = queue.pool
        self._target = queue.target
        self._user = queue.user

    @asynccontextmanager
    async def transaction(self, library: str) -> AsyncIterator[Tx]:
        """A transaction holding the library's matching lock, with HNSW scans that fill
        their LIMIT past rows a filter drops (exact order)."""
        with errors.translated(target=self._target, user=self._user):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(query("lock_library"), library)
                await conn.fetch(query("search_settings"), MAX_SCAN_TUPLES)
                yield Tx(conn)

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """One read-only query, outside any transaction of the caller."""
        with errors.translated(target=self._target, user=self._user):
            return list(await self._pool.fetch(query(name), *args))

    async def execute(self, name: str, *args: Any) -> None:
        """One statement in its own transaction; a name taken is DuplicatePerson."""
        with errors.translated(target=self._target, user=self._user):
            try:
                await self._pool.execute(query(name), *args)
            except asyncpg.UniqueViolationError as exc:
                raise DuplicatePerson(f"that name is taken in the library ({exc.detail})") from exc
