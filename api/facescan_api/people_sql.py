"""The API's own SQL over the people's tables (``people.sql``, by ``-- name:``), run on the
queue's pool with the queue's error translation.

Used by ``facescan_api.uploads`` (reference photos uploaded to POST /people) and
``facescan_api.cluster_service`` (the faces POST /cluster clusters).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from facescan_queue import errors
from facescan_queue.queries import named_queries
from facescan_queue.repository import Queue


def query(name: str) -> str:
    """One named query of people.sql; a KeyError names the missing query."""
    try:
        return named_queries(__package__ or "facescan_api", "people.sql")[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in facescan_api's people.sql") from None


@contextmanager
def translated(queue: Queue) -> Iterator[None]:
    """Driver errors as the queue's typed errors (the database down: unavailable)."""
    with errors.translated(target=queue.target, user=queue.user):
        yield
