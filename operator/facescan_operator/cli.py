"""`facescan`: scan a photo library on this machine and inspect the queue.

Every command but `operator` takes --dsn (a PostgreSQL URL; FACESCAN_DSN, or a file named
by FACESCAN_DSN_FILE) or --data-dir (the embedded PostgreSQL's directory, used when no
DSN is given). Exit codes: 0 success (failed images are data, not errors), 2 usage error
(a malformed database URL included) or unknown image or library, 3
database error, 4 the detectors of `scan` cannot run (they cannot start, or the scan
started the most processes it may), 5 `register` refused (an unreadable or empty library
root: nothing marked missing), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
The README has the table of every code and its causes.

The commands live in cli_scan.py (scan, register), cli_queue.py (status, failures, faces,
requeue, rescan), cli_admin.py (db, import-legacy, operator), people_cli.py (people) and
serve_cli.py (serve: runs `facescan-detector serve`); what they share in cli_common.py.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from facescan_operator import cli_admin, cli_queue, cli_scan
from facescan_operator.cli_common import UsageCommand
from facescan_operator.people_cli import people_app
from facescan_operator.serve_cli import register as register_serve


def _version(value: bool) -> None:
    if value:
        print(f"facescan {version('facescan')}")
        raise typer.Exit()


app = typer.Typer(
    help="Find every face in a photo library without losing one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # plain help: paragraphs rewrapped, no types on flags
)


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print facescan's version and exit.",
        ),
    ] = False,
) -> None:
    """Find every face in a photo library without losing one."""


app.add_typer(cli_admin.db_app, name="db")
for command in (
    cli_scan.scan,
    cli_scan.register,
    cli_queue.status,
    cli_queue.failures,
    cli_queue.faces,
    cli_queue.requeue,
    cli_queue.rescan,
):
    app.command(cls=UsageCommand)(command)
app.command("import-legacy", cls=UsageCommand)(cli_admin.import_legacy)
app.command(cls=UsageCommand)(cli_admin.operator)
app.add_typer(people_app, name="people")
register_serve(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
