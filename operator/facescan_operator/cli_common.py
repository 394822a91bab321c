"""What every `facescan` command shares: the database options (--dsn, --data-dir), the
library and --json options, the exit codes, and how a command opens the database
(:func:`run`: the embedded PostgreSQL started and migrated when no URL is given) and
reports bad input (:func:`fail`, exit 2). cli.py assembles the commands of cli_scan.py,
cli_queue.py, cli_admin.py and people_cli.py into the `facescan` app.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from pydantic import SecretStr

from facescan_operator.embedded_db import (
    EmbeddedDatabase,
    EmbeddedDatabaseError,
    default_data_dir,
)
from facescan_operator.workers import DetectorsCannotRun
from facescan_queue.errors import QueueError, UnknownImage, UnknownLibrary
from facescan_queue.migrate import migrate, migrate_if_owner
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings, DsnError, parse_dsn, read_dsn_file

T = TypeVar("T")


EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_DETECTORS = 4
"""`scan`: the detectors cannot run (cannot start, or the scan's bound of processes)."""
EXIT_REFUSED = 5
"""`register`: the library root cannot be read, or has no image (an unmounted volume?)."""
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UsageCommand(typer.core.TyperCommand):
    """A command whose usage line names its arguments as people expect (`PATH...`,
    `[PATH]...`), as uv, ruff or kubectl do (typer writes `{paths}...`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar="FACESCAN_DSN",
        show_envvar=True,
        help="PostgreSQL URL, postgresql://USER:PASSWORD@HOST:PORT/DATABASE (a command "
        "line is visible to every user of the machine: prefer FACESCAN_DSN, or "
        "FACESCAN_DSN_FILE naming a file that holds the URL). Without any, an embedded "
        "PostgreSQL in --data-dir.",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Embedded PostgreSQL directory (default: $XDG_DATA_HOME/facescan/postgres).",
    ),
]
LibraryOption = Annotated[
    str | None,
    typer.Option(
        "--library",
        help="The library by name, e.g. a FaceScan's <namespace>/<name>; image paths are "
        "then relative to its root (default: the scanned directory an absolute PATH is in).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")
]


def database(dsn: str | None, data_dir: Path | None, *, create: bool) -> tuple[str, Any]:
    """The database URL to use, checked (a malformed one is a usage error whose message
    quotes none of it), and the embedded database started for it if there is no URL."""
    try:
        if not dsn and os.environ.get("FACESCAN_DSN_FILE"):
            dsn = read_dsn_file(Path(os.environ["FACESCAN_DSN_FILE"]))
        if dsn:
            parse_dsn(dsn)
    except DsnError as exc:
        fail(str(exc))
    if dsn:
        return dsn, None
    directory = data_dir or default_data_dir()
    if not create and not (directory / "PG_VERSION").exists():
        fail(f"no facescan database in {directory}: run `facescan scan DIR` first, or give --dsn")
    try:
        embedded = EmbeddedDatabase(directory)
    except EmbeddedDatabaseError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE if exc.usage else EXIT_DATABASE) from None
    return embedded.dsn, embedded


def run(
    main: Callable[[Queue, str], Awaitable[T]],
    dsn: str | None,
    data_dir: Path | None,
    *,
    create: bool = False,
) -> T:
    url, embedded = database(dsn, data_dir, create=create)
    settings = DatabaseSettings(dsn=SecretStr(url))

    async def go() -> T:
        # SIGTERM (kill, systemd, a container stop) ends the run as Ctrl-C does: workers
        # stopped, their images handed back, the embedded database shut down
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        if embedded is not None:
            await migrate(settings)  # the embedded database is this command's own
        elif create:
            await migrate_if_owner(settings)  # a role granted libraries: the admin migrates
        queue = await Queue.connect(settings, max_size=4)
        try:
            return await main(queue, url)
        finally:
            await queue.close()

    try:
        return asyncio.run(go())
    except (UnknownImage, UnknownLibrary, DsnError) as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except QueueError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_DATABASE) from None
    except DetectorsCannotRun as exc:
        print(
            f"facescan: {exc}; unfinished images were handed back to the queue",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_DETECTORS) from None
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        print(
            "facescan: interrupted; unfinished images were handed back to the queue",
            file=sys.stderr,
        )
        code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
        raise typer.Exit(code) from None
    finally:
        if embedded is not None:
            embedded.stop()


def fail(message: str) -> None:
    print(f"facescan: {message}", file=sys.stderr)
    raise typer.Exit(2)


def emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        print(text)
