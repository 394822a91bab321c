"""Loads the people's SQL, ``queries.sql`` of this package, by its ``-- name:`` headers.

Called by the people's repository; no SQL is assembled in Python strings. (The queue's
``facescan_queue.queries`` reads its own package's file the same way.)
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Every query of ``queries.sql`` keyed by its ``-- name:`` header."""
    text = files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> str:
    """One named query; a KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in facescan_people/queries.sql") from None
