"""`facescan serve`: the HTTP API, which is the detector's (`facescan-detector serve`).

Registered in cli.py (``register``). The operator never imports the detector, so this
command runs the detector's executable (found as the local runner finds it,
``workers.default_detector``) with the same options: by exec, so signals, output and
exit status are the server's own. Two options are handled here first: ``--dsn`` moves
into the server's environment (FACESCAN_DSN: off the command line that `ps` shows),
and ``--data-dir`` starts the embedded PostgreSQL of that directory and brings its
schema up to date (that database is this command's own), whose URL the server then
gets; that server runs as a child, and the database stops after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr

from facescan_operator.embedded_db import EmbeddedDatabase, EmbeddedDatabaseError
from facescan_operator.workers import default_detector
from facescan_queue.errors import QueueError
from facescan_queue.migrate import migrate
from facescan_queue.settings import DatabaseSettings

EXIT_USAGE = 2
EXIT_DATABASE = 3

HELP = (
    "Serve the HTTP API: POST /detect (an uploaded photo's faces), /health, /metrics. "
    "Runs `facescan-detector serve` with these options (`facescan serve --help` lists "
    "them); needs FACESCAN_API_KEYS, or --no-auth on 127.0.0.1."
)


def register(app: typer.Typer) -> None:
    """Adds `serve` to the `facescan` app: every argument goes to the detector's."""
    app.command(
        name="serve",
        help=HELP,
        add_help_option=False,  # --help is the server's own
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(serve)


def serve(ctx: typer.Context) -> None:
    args, data_dir = take_option(list(ctx.args), "--data-dir")
    args, dsn = take_option(args, "--dsn")
    env = dict(os.environ)
    if dsn is not None:
        env["FACESCAN_DSN"] = dsn
    command = [*default_detector(), "serve", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    if data_dir is None:
        os.execve(command[0], command, env)
    try:
        embedded = EmbeddedDatabase(Path(data_dir))
    except EmbeddedDatabaseError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE if exc.usage else EXIT_DATABASE) from None
    try:
        try:
            asyncio.run(migrate(DatabaseSettings(dsn=SecretStr(embedded.dsn))))
        except QueueError as exc:
            print(f"facescan: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_DATABASE) from None
        env["FACESCAN_DSN"] = embedded.dsn
        raise typer.Exit(_run_child(command, env))
    finally:
        embedded.stop()


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Runs the server to its end; SIGTERM is passed on, Ctrl-C reaches it by itself."""
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, _: Any) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)


def take_option(args: list[str], name: str) -> tuple[list[str], str | None]:
    """``args`` without ``name VALUE`` / ``name=VALUE`` (the last one wins), and VALUE."""
    rest: list[str] = []
    value: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
            index += 2
            continue
        if arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    return rest, value
