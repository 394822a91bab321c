"""The queue's typed errors, and the translation of PostgreSQL errors into them.

Raised by the repository and the migrator; the CLI, the operator and the detector catch
``QueueError`` subclasses and print their message, which always says what to do.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg


class QueueError(Exception):
    """Base of every error of the queue contract."""


class DatabaseUnavailable(QueueError):
    """The database cannot be reached (down, wrong host, network, connection lost)."""


class PermissionDenied(QueueError):
    """The database user lacks a privilege or a library; the message names the GRANT or
    the `facescan db grant` to run."""


class SchemaError(QueueError):
    """The facescan schema is missing, older or newer than this facescan expects."""


class LegacyTableConflict(SchemaError):
    """An older worker's table stands where facescan wants to put something."""


class LeaseLost(QueueError):
    """The caller no longer holds the image (reclaimed, taken over): it must not commit."""


class IllegalTransition(QueueError):
    """The state machine refuses the move (e.g. completing an image never started)."""


class UnknownLibrary(QueueError):
    """No library of that name is registered."""


class UnknownImage(QueueError):
    """No image of that id or path is registered."""


class InvalidArgument(QueueError):
    """The arguments are refused (bad path, embedding size, limit)."""


_BY_SQLSTATE: dict[str, type[QueueError]] = {
    "FS001": LeaseLost,
    "FS002": IllegalTransition,
    "FS003": UnknownLibrary,
    "FS004": UnknownImage,
    "FS005": InvalidArgument,
}

_TABLE_IN_MESSAGE = re.compile(r"permission denied for (?:table|relation|schema|function) (\S+)")

GRANTS = (
    "GRANT USAGE ON SCHEMA facescan TO {user};\n"
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA facescan TO {user};\n"
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA facescan TO {user};"
)


def grant_advice(user: str, what: str) -> str:
    """The message for a missing privilege: what is refused, the `facescan db grant` that
    lets the user use one library, and the exact GRANTs that let it use every one (the
    SQL last, from the first "GRANT" on)."""
    quoted = '"' + user.replace('"', '""') + '"'
    return (
        f"database user {user!r} lacks privileges on {what}. As the owner of the facescan "
        "schema (or a superuser), either let it use one library, as a detector (add "
        "--operator for the operator's calls too):\n"
        f"facescan db grant --role {shlex.quote(user)} --library NAME\n"
        f"or let it use every library:\n{GRANTS.format(user=quoted)}"
    )


def library_advice(user: str, library: str, level: str) -> str:
    """The message for a library the user's role is not granted (FS006), with the
    `facescan db grant` that grants it; an empty library means every library."""
    operator = level == "operator"
    if not library:
        return (
            f"database user {user!r} may not act on every library at once: only the "
            "owner of the facescan schema, or a role granted every privilege on its "
            "tables, may (a role granted libraries names one)"
        )
    flag = " --operator" if operator else ""
    calls = "the operator's calls" if operator else "a detector's calls"
    return (
        f"database user {user!r} may not use library {library!r} for {calls}. As the "
        "owner of the facescan schema (or a superuser), run: facescan db grant --role "
        f"{shlex.quote(user)} --library {shlex.quote(library)}{flag}"
    )


def translate(exc: BaseException, *, target: str, user: str) -> QueueError | None:
    """The typed error for a driver exception, or None when it is not one of ours."""
    # connection-level failures first: some of them are PostgresError subclasses
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.TooManyConnectionsError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError,
    ) or (
        isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError)
        and "not currently accepting connections" in str(exc)
    ):
        cause = str(exc) or type(exc).__name__
        return DatabaseUnavailable(f"cannot reach PostgreSQL at {target}: {cause}")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == "FS006":  # facescan.authorize: DETAIL the library, HINT the level
            return PermissionDenied(
                library_advice(
                    user, getattr(exc, "detail", None) or "", getattr(exc, "hint", None) or ""
                )
            )
        if sqlstate in _BY_SQLSTATE:
            return _BY_SQLSTATE[sqlstate](str(exc))
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            match = _TABLE_IN_MESSAGE.search(str(exc))
            return PermissionDenied(grant_advice(user, match[1] if match else "facescan"))
        if isinstance(exc, asyncpg.CheckViolationError) and (
            getattr(exc, "constraint_name", None) == "images_path_relative"
        ):
            return InvalidArgument(
                "image paths must be relative to the library root, without '..': "
                f"{getattr(exc, 'detail', None) or exc}"
            )
        if isinstance(exc, asyncpg.CheckViolationError) and (
            getattr(exc, "table_name", None) == "libraries"
        ):
            return InvalidArgument(
                "invalid library policy (cascade models must be hog, cnn or insightface, "
                "with as many scales in (0, 1] as models; backoff and attempts positive): "
                f"{exc}"
            )
        if isinstance(exc, asyncpg.UndefinedFunctionError | asyncpg.UndefinedTableError):
            return SchemaError(
                f"the facescan schema is missing or incomplete on {target} ({exc}): "
                "run `facescan db migrate`"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return DatabaseUnavailable(f"database does not exist on {target}: {exc}")
        if isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return DatabaseUnavailable(f"cannot log in to {target}: {exc}")
        if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.AdminShutdownError):
            return DatabaseUnavailable(
                f"PostgreSQL at {target} is not accepting connections: {exc}"
            )
        return None
    if isinstance(exc, OSError | TimeoutError):
        cause = str(exc) or type(exc).__name__
        return DatabaseUnavailable(f"cannot reach PostgreSQL at {target}: {cause}")
    return None


@contextmanager
def translated(*, target: str, user: str) -> Iterator[None]:
    """Re-raises driver errors as typed queue errors, the cause chained."""
    try:
        yield
    except QueueError:
        raise
    except Exception as exc:
        typed = translate(exc, target=target, user=user)
        if typed is None:
            raise
        raise typed from exc
