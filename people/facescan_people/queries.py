"""The people's SQL by its ``-- name:`` headers: ``queries.sql`` (matching and the
directory), ``clusters.sql`` (clustering) and ``actions.sql`` (merge, move, remove, undo,
suggest) of this package, read as the queue reads its own
(facescan_queue.queries.named_queries).

Called by the people's repository; no SQL is assembled in Python strings.
"""

from __future__ import annotations

from functools import cache

from facescan_queue.queries import named_queries

FILES = ("queries.sql", "clusters.sql", "actions.sql")


@cache
def queries() -> dict[str, str]:
    """Every named query of the people's SQL files (a name is in one file only)."""
    merged: dict[str, str] = {}
    for name in FILES:
        found = named_queries(__package__ or "facescan_people", name)
        twice = merged.keys() & found.keys()
        if twice:
            raise KeyError(f"queries named twice in facescan_people: {sorted(twice)}")
        merged.update(found)
    return merged


def query(name: str) -> str:
    """One named query; a KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in facescan_people's SQL files") from None
