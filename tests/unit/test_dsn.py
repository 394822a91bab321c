"""The database URL parser every part of facescan names its database with: what it
reads from a well-formed URL (as asyncpg reads it), and that a malformed one is refused
with a message that quotes none of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from facescan_queue.errors import QueueError
from facescan_queue.settings import DatabaseSettings, DsnError, parse_dsn

SECRETS = ("hunter2Q", "zebra9K")


@pytest.fixture(autouse=True)
def no_libpq_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "FACESCAN_DSN", "FACESCAN_DSN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "me")


@pytest.mark.parametrize(
    ("dsn", "target", "user"),
    [
        ("postgresql://alice:hunter2Q@db:6543/photos", "db:6543/photos", "alice"),
        ("postgres://alice@db/photos", "db:5432/photos", "alice"),
        ("postgresql://alice:hunter2Q%2F%40%3F%23zebra9K@db/photos", "db:5432/photos", "alice"),
        ("postgresql://alice:hunter2Q:zebra9K@db/photos", "db:5432/photos", "alice"),
        ("postgresql://alice@db/photos?password=hunter2Q%26zebra9K", "db:5432/photos", "alice"),
        ("postgresql://a%40corp@db/ph%40tos", "db:5432/ph@tos", "a@corp"),
        ("postgresql://alice@[::1]:6543/photos", "[::1]:6543/photos", "alice"),
        ("postgresql://db1:6001,db2/photos", "db1:6001,db2:5432/photos", "me"),
        (
            "postgresql://postgres:@/photos?host=/run/pg&port=6000",
            "/run/pg:6000/photos",
            "postgres",
        ),
        ("postgresql:///photos?host=db&user=bob&dbname=other", "db:5432/photos", "bob"),
        ("postgresql://db", "db:5432/me", "me"),
        ("postgresql://db/p?sslmode=require&application_name=fs", "db:5432/p", "me"),
    ],
)
def test_a_well_formed_url_names_its_host_port_database_and_user(
    dsn: str, target: str, user: str
) -> None:
    parts = parse_dsn(dsn)
    assert (parts.target(), parts.user) == (target, user)
    assert not any(secret in repr(parts) for secret in SECRETS)


def test_what_the_url_leaves_out_comes_from_the_libpq_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "pg.internal")
    monkeypatch.setenv("PGPORT", "6432")
    monkeypatch.setenv("PGUSER", "scanner")
    assert parse_dsn(None).target() == "pg.internal:6432/scanner"
    assert parse_dsn("postgresql:///photos").target() == "pg.internal:6432/photos"
    assert parse_dsn("postgresql://db/photos").target() == "db:6432/photos"  # asyncpg's way
    monkeypatch.setenv("PGPORT", "hunter2Q")
    with pytest.raises(DsnError, match="PGHOST/PGPORT"):
        parse_dsn(None)


@pytest.mark.parametrize(
    ("dsn", "why"),
    [
        ("postgresql://alice:hunter2Q/zebra9K@db/photos", "ends the host part early"),
        ("postgresql://alice:hunter2Q?zebra9K@db/photos", "ends the host part early"),
        ("postgresql://alice:hunter2Q#zebra9K@db/photos", "ends the host part early"),
        ("postgresql://alice:hunter2Q@zebra9K@db/photos", "more than one '@'"),
        ("hunter2Qzebra9K", "does not start with postgresql://"),
        ("mysql://alice:hunter2Qzebra9K@db/photos", "does not start with postgresql://"),
        ("postgresql://alice:hunter2Qzebra9K/photos", "is not a number from 1 to 65535"),
        ("postgresql://alice:x@db:hunter2Q/photos", "is not a number from 1 to 65535"),
        ("postgresql://alice:x@db:0/photos", "is not a number from 1 to 65535"),
        ("postgresql://alice@db/photos?port=hunter2Q", "is not a number from 1 to 65535"),
        ("postgresql://alice@db/photos?password=hunter2Q&zebra9K", "NAME=VALUE pairs"),
        ("postgresql://alice@db/photos?password=hunter2Q&zebra9K=1", "a parameter other than"),
        ("postgresql://alice:hunter2Q@[zebra9K/photos", "cannot be split"),
        ("postgresql://alice:hunter2Q@[zebra9K]x/photos", "cannot be split"),
        ("postgresql://alice:hunter2Q@,db/photos", "empty host"),
    ],
)
def test_a_malformed_url_is_refused_quoting_none_of_it(dsn: str, why: str) -> None:
    with pytest.raises(DsnError) as refused:
        parse_dsn(dsn)
    message = str(refused.value)
    assert message.startswith("the database URL is malformed: ")
    assert why in message
    assert not any(secret in message for secret in SECRETS)
    # no chained error, whose text a traceback would show, may hold the URL
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None or refused.value.__suppress_context__
    assert isinstance(refused.value, QueueError)  # every caller's catch covers it


def test_settings_refuse_a_malformed_url_when_asked_where_they_connect() -> None:
    settings = DatabaseSettings(dsn=SecretStr("postgresql://alice:hunter2Q/zebra9K@db/photos"))
    assert "hunter2Q" not in repr(settings)
    for where in (settings.target, settings.user, settings.parts):
        with pytest.raises(DsnError):
            where()


def test_the_url_may_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "facescan.dsn"
    file.write_text("  postgresql://alice:hunter2Q@db/photos\n")
    monkeypatch.setenv("FACESCAN_DSN_FILE", str(file))
    assert DatabaseSettings().dsn_value() == "postgresql://alice:hunter2Q@db/photos"
    assert DatabaseSettings().target() == "db:5432/photos"
    monkeypatch.setenv("FACESCAN_DSN", "postgresql://bob@other/photos")  # the variable wins
    assert DatabaseSettings().target() == "other:5432/photos"
    monkeypatch.delenv("FACESCAN_DSN")
    file.write_text("\n")
    with pytest.raises(DsnError, match=f"the database URL file {file} is empty"):
        DatabaseSettings().dsn_value()
    file.unlink()
    with pytest.raises(DsnError, match=f"cannot read the database URL file {file}: No such"):
        DatabaseSettings().target()
