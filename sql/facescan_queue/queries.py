"""Loads the named SQL of facescan: ``queries.sql`` by name, the schema and migrations.

Called by the repository and the migrator; no SQL is assembled in Python strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def named_queries(package: str, name: str = "queries.sql") -> dict[str, str]:
    """Every query of a package's SQL file keyed by its ``-- name:`` header (the queue's,
    and the people's: facescan_people.queries)."""
    text = files(package).joinpath(name).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def queries() -> dict[str, str]:
    """Every query of ``queries.sql`` keyed by its ``-- name:`` header."""
    return named_queries(__package__ or "facescan_queue")


def query(name: str) -> str:
    """One named query; a KeyError names the missing query."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations, in order."""
    found = []
    for entry in files(__package__).joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this facescan expects."""
    return migrations()[-1].version


def schema_sql() -> str:
    """The current schema in one script (tables, types, views)."""
    return _read("schema.sql")


def functions_sql() -> str:
    """The state machine's functions and triggers (CREATE OR REPLACE, re-applied)."""
    return _read("functions.sql")
