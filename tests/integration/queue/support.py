"""Helpers of the queue's integration tests: building images and results, driving an
image to a given state, and reading the truth straight from the tables."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from facescan_queue.models import (
    ClaimedImage,
    DetectionResult,
    FaceResult,
    NewImage,
    QueueStatus,
    StartedImage,
)
from facescan_queue.repository import Queue

LIB = "photos"
LEASE_S = 300


def new_images(
    n: int, prefix: str = "img", *, width: int | None = 1000, height: int | None = 1000
) -> list[NewImage]:
    """n images of one size class (1 MP by default: class 0)."""
    return [NewImage(f"{prefix}/{i:05d}.jpg", width, height, 100_000 + i) for i in range(n)]


def face(i: int = 0, *, dims: int | None = 128) -> FaceResult:
    """A face with a distinct box; an embedding of ``dims`` numbers (None: none)."""
    embedding = None if dims is None else tuple(float(i) + j / 1000 for j in range(dims))
    return FaceResult(
        top=10 * i,
        right=10 * i + 50,
        bottom=10 * i + 60,
        left=10 * i,
        score=0.9,
        landmarks=(1.0, 2.0, 3.0, 4.0),
        embedding=embedding,
    )


def result(faces: Sequence[FaceResult] = (), *, width: int = 1000) -> DetectionResult:
    return DetectionResult(
        faces=tuple(faces),
        max_dimension=1280,
        duration_ms=42,
        original_width=width,
        original_height=width,
    )


async def register(queue: Queue, n: int, prefix: str = "img", **kw: int | None) -> None:
    assert await queue.register(LIB, new_images(n, prefix, **kw)) == n


async def claim(
    queue: Queue,
    owner: str,
    *,
    step: int = 0,
    size_class: int = 0,
    limit: int = 100,
    library: str = LIB,
) -> list[ClaimedImage]:
    return await queue.claim(
        library, owner, step=step, size_class=size_class, limit=limit, lease_seconds=LEASE_S
    )


async def claim_and_start(
    queue: Queue, owner: str, *, step: int = 0, size_class: int = 0, limit: int = 1
) -> StartedImage:
    """Claims up to ``limit`` images and starts the first."""
    assert await claim(queue, owner, step=step, size_class=size_class, limit=limit)
    started = await queue.start_next(owner)
    assert started is not None
    return started


def as_user(dsn: str, user: str) -> str:
    """The same database as another user (the server trusts its unix socket)."""
    assert dsn.startswith("postgresql://postgres:@")
    return dsn.replace("postgresql://postgres:@", f"postgresql://{user}:@", 1)


async def new_role(db: asyncpg.Connection, *grants: str, prefix: str = "limited") -> str:
    """A new LOGIN role with the given GRANTs ({role} stands for its quoted name)."""
    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await db.execute(f'CREATE ROLE "{role}" LOGIN')
    for grant in grants:
        await db.execute(grant.format(role=f'"{role}"'))
    return role


async def make_due(db: asyncpg.Connection) -> None:
    """Every waiting retry becomes runnable now (instead of waiting for its backoff)."""
    await db.execute("UPDATE facescan.images SET next_attempt_at = now()")


async def expire(db: asyncpg.Connection, owner: str | None = None) -> None:
    """The lease of ``owner`` (every lease when None) expires: its holder stopped."""
    await db.execute(
        "UPDATE facescan.leases SET expires_at = now() - interval '1 s'"
        " WHERE $1::text IS NULL OR owner = $1",
        owner,
    )


# the open attempt of an image in progress (its lease's started_attempt), else NULL
STARTED_ATTEMPT = (
    "(SELECT l.started_attempt FROM facescan.leases l WHERE l.owner = i.lease_owner"
    " AND l.started_image = i.id AND i.state = 'leased')"
)


async def image_row(db: asyncpg.Connection, image_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        f"SELECT i.*, {STARTED_ATTEMPT} AS started_attempt FROM facescan.images i WHERE i.id = $1",
        image_id,
    )
    assert row is not None
    return row


async def failure_row(db: asyncpg.Connection, image_id: int) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM facescan.failures WHERE image_id = $1", image_id)


async def seconds_until(db: asyncpg.Connection, when: datetime | None) -> float:
    """Seconds from the database's clock to ``when``."""
    assert when is not None
    return float(await db.fetchval("SELECT extract(epoch FROM $1::timestamptz - now())", when))


async def delay_of(db: asyncpg.Connection, image_id: int) -> float:
    """Seconds until the image is runnable again."""
    return float(
        await db.fetchval(
            "SELECT extract(epoch FROM next_attempt_at - now()) FROM facescan.images WHERE id = $1",
            image_id,
        )
    )


async def face_count(db: asyncpg.Connection, image_id: int) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM facescan.faces WHERE image_id = $1", image_id)
    )


async def truth(db: asyncpg.Connection, library: str = LIB) -> QueueStatus:
    """The status computed with plain SQL over the tables, not from the counters."""
    row = await db.fetchrow(
        """
        SELECT count(*) AS images,
               count(*) FILTER (WHERE state = 'pending') AS pending,
               count(*) FILTER (WHERE state = 'leased') AS leased,
               count(*) FILTER (WHERE state = 'done') AS done,
               count(*) FILTER (WHERE state = 'done' AND degraded) AS degraded,
               count(*) FILTER (WHERE state = 'pending' AND error_type IS NOT NULL)
                   AS retrying,
               count(*) FILTER (WHERE state = 'dead') AS dead,
               (SELECT count(*) FROM facescan.faces f JOIN facescan.images j
                   ON j.id = f.image_id WHERE j.library = $1) AS faces
        FROM facescan.images WHERE library = $1
        """,
        library,
    )
    assert row is not None
    by_type = {
        r["error_type"]: r["n"]
        for r in await db.fetch(
            "SELECT error_type::text, count(*) AS n FROM facescan.images"
            " WHERE library = $1 AND error_type IS NOT NULL AND state IN ('pending', 'dead')"
            " GROUP BY error_type",
            library,
        )
    }
    return QueueStatus(**dict(row), by_error_type=by_type)
