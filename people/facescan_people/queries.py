"""The people's SQL, ``queries.sql`` of this package, by its ``-- name:`` headers (read as
the queue reads its own: facescan_queue.queries.named_queries).

Called by the people's repository; no SQL is assembled in Python strings.
"""

from __future__ import annotations

from facescan_queue.queries import named_queries


def query(name: str) -> str:
    """One named query; a KeyError names the missing query."""
    try:
        return named_queries(__package__ or "facescan_people")[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in facescan_people/queries.sql") from None
