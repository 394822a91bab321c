"""Database settings, read from the environment (FACESCAN_*) by every part of facescan,
and the one parser of a database URL that messages may quote from.

There is no default password anywhere: without FACESCAN_DSN (or FACESCAN_DSN_FILE) the
standard libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) apply, as for
psql.

A URL is checked here, before the driver sees it, by the rules asyncpg splits it with:
whatever this parser accepts, asyncpg reads the same way, and whatever it refuses raises
``DsnError``, whose message quotes nothing of the URL (a malformed URL may have its
password anywhere). Messages name a database by ``target()`` (host:port/database) only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from facescan_queue.errors import QueueError

DSN_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_ENCODE = "percent-encode '@' as %40, '/' as %2F, '?' as %3F, '#' as %23, ':' as %3A"
_IPV6 = re.compile(r"\[([^\]]+)\](?::(.*))?")
QUERY_PARAMETERS = frozenset(
    {
        *("host", "port", "dbname", "database", "user", "password", "passfile", "service"),
        *("sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword"),
        *("sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version"),
        *("target_session_attrs", "krbsrvname", "gsslib", "application_name", "options"),
    }
)
"""The query-string parameters a URL may hold: asyncpg's own, and the two server settings
libpq also takes from a URL. asyncpg would send any other to the server as a setting,
and the server's refusal quotes its name."""


class DsnError(QueueError):
    """The database URL cannot be used as written: a usage error. The message says what
    is wrong with it and quotes no part of it."""


@dataclass(frozen=True)
class DsnParts:
    """What a database URL (with the PG* variables for what it leaves out) connects to;
    everything but the password, which is never kept here."""

    hosts: tuple[tuple[str, int], ...]
    database: str
    user: str

    def target(self) -> str:
        """host:port/database, for messages (host:port,host:port/database for several)."""
        return (
            ",".join(
                f"[{host}]:{port}" if ":" in host and not host.startswith("/") else f"{host}:{port}"
                for host, port in self.hosts
            )
            + f"/{self.database}"
        )


class DatabaseSettings(BaseSettings):
    """Where the queue lives and how to talk to it."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_", extra="ignore")

    dsn: SecretStr | None = None
    """PostgreSQL URL, e.g. postgresql://facescan@db:5432/photos (FACESCAN_DSN). Kept
    secret: never printed. Without it, FACESCAN_DSN_FILE, else the PG* variables."""

    dsn_file: Path | None = None
    """A file holding the PostgreSQL URL (FACESCAN_DSN_FILE; surrounding whitespace
    ignored), used when FACESCAN_DSN is not set: a URL in a file appears in no process
    listing and no shell history."""

    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds to wait for a connection before the database counts as unavailable."""

    command_timeout_s: float = Field(default=120.0, gt=0)
    """Seconds any one queue call may take."""

    def dsn_value(self) -> str | None:
        """The DSN itself, for the driver only; DsnError if FACESCAN_DSN_FILE is unreadable."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        if self.dsn_file is not None:
            return read_dsn_file(self.dsn_file)
        return None

    def parts(self) -> DsnParts:
        """Where we connect, checked: DsnError for a URL the driver would misread."""
        return parse_dsn(self.dsn_value())

    def target(self) -> str:
        """Where we connect, for messages: host:port/database, never the password."""
        return self.parts().target()

    def user(self) -> str:
        """The database user we connect as, for messages and GRANT advice."""
        return self.parts().user


def read_dsn_file(path: Path) -> str:
    """The URL a file holds, without surrounding whitespace; DsnError names the file
    (not its content) when it cannot be read or is empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DsnError(f"cannot read the database URL file {path}: {reason}") from None
    if not text:
        raise DsnError(f"the database URL file {path} is empty")
    return text


def parse_dsn(dsn: str | None) -> DsnParts:
    """The hosts, database and user a URL names, the PG* variables filling what it leaves
    out (as asyncpg and libpq do). Total: any malformed URL raises DsnError, whose message
    quotes nothing of it."""
    env = os.environ
    user = env.get("PGUSER") or env.get("USER", "postgres")
    database = env.get("PGDATABASE", "")
    hostspec = env.get("PGHOST", "localhost")
    if not dsn:
        return DsnParts(
            _hosts(hostspec, env.get("PGPORT"), "PGHOST/PGPORT"), database or user, user
        )
    try:
        parsed = urlsplit(dsn)
        scheme = parsed.scheme
    except ValueError:  # e.g. an unbalanced '[' in the host
        raise DsnError(_malformed("it cannot be split into its parts")) from None
    if scheme not in ("postgresql", "postgres"):
        raise DsnError(_malformed("it does not start with postgresql:// or postgres://"))
    if "@" in parsed.path + parsed.query + parsed.fragment:
        raise DsnError(
            _malformed(
                "a character in its user or password ends the host part early (in a "
                f"password, {_ENCODE})"
            )
        )
    auth, _, netloc_hosts = parsed.netloc.rpartition("@")
    if "@" in auth:
        raise DsnError(_malformed(f"it holds more than one '@' (in a password, {_ENCODE})"))
    query: dict[str, list[str]] = {}
    if parsed.query:
        try:
            query = parse_qs(parsed.query, strict_parsing=True)
        except ValueError:
            raise DsnError(
                _malformed(
                    "its query string is not NAME=VALUE pairs joined by '&' (in a value, "
                    "percent-encode '&' as %26)"
                )
            ) from None
    if not query.keys() <= QUERY_PARAMETERS:  # asyncpg would send it to the server, which
        raise DsnError(  # quotes it back: a password's tail after an unencoded '&'
            _malformed(
                "its query string has a parameter other than "
                f"{', '.join(sorted(QUERY_PARAMETERS))} (in a value, percent-encode '&' "
                "as %26)"
            )
        )
    user = unquote(auth.partition(":")[0]) or (query.get("user") or [user])[-1]
    path = unquote(parsed.path.removeprefix("/"))
    database = path or (query.get("dbname") or query.get("database") or [database])[-1]
    for port in (query.get("port") or [""])[-1].split(","):
        if port:  # checked even where the host part's ports win: a typo all the same
            _port(port, "the query string")
    if netloc_hosts:  # asyncpg: the ports of the host part, else PGPORT, else 5432
        hosts = _hosts(netloc_hosts, env.get("PGPORT"), "the host part", unquote_hosts=True)
    else:
        port = (query.get("port") or [env.get("PGPORT", "")])[-1]
        hosts = _hosts((query.get("host") or [hostspec])[-1], port, "the host or port")
    return DsnParts(hosts, database or user, user)


def _hosts(
    hostspec: str, ports: str | None, where: str, *, unquote_hosts: bool = False
) -> tuple[tuple[str, int], ...]:
    """host[:port][,host[:port]]... with the ports of ``ports`` (comma-separated; one for
    all, or one per host) where a host names none; default 5432."""
    specs = hostspec.split(",")
    given = [p for p in (ports or "").split(",")] if ports else []
    if given and len(given) not in (1, len(specs)):
        raise DsnError(_malformed(f"{where} names {len(specs)} hosts but {len(given)} ports"))
    hosts = []
    for i, spec in enumerate(specs):
        if spec.startswith("/"):  # a Unix socket directory
            host, port_text = spec, ""
        elif spec.startswith("["):
            match = _IPV6.fullmatch(spec)
            if match is None:
                raise DsnError(_malformed(f"an IPv6 address in {where} lacks its ']'"))
            host, port_text = match[1], match[2] or ""
        else:
            host, _, port_text = spec.partition(":")
        if unquote_hosts:
            host, port_text = unquote(host), unquote(port_text)
        if not host:
            raise DsnError(_malformed(f"{where} has an empty host"))
        if not port_text and given:
            port_text = given[i] if len(given) > 1 else given[0]
        hosts.append((host, _port(port_text, where) if port_text else 5432))
    return tuple(hosts)


def _port(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise DsnError(
            _malformed(
                f"a port in {where} is not a number from 1 to 65535 (a ':' in a password "
                "must be the first one after the user, and '/', '?', '#', '@' in it "
                "percent-encoded)"
            )
        )
    return int(text)


def _malformed(why: str) -> str:
    return f"the database URL is malformed: {why}. Expected {DSN_FORM}"
