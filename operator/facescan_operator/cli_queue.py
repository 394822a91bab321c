"""The queue's commands: `status`, `failures`, `faces`, `requeue`, `rescan` (registered
in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import typer.core

from facescan_operator import commands, inspection
from facescan_operator.cli_common import (
    DataDirOption,
    DsnOption,
    JsonOption,
    LibraryOption,
    emit,
    run,
)
from facescan_queue.types import ErrorType


def status(
    dsn: DsnOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Counts of every library: images, done, faces, retrying, dead, degraded."""
    totals, per_library = run(commands.status, dsn, data_dir)
    data = {**totals.as_json(), "libraries": {k: v.as_json() for k, v in per_library.items()}}
    emit(data, as_json, commands.status_text(totals, per_library))


def failures(
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    error_type: Annotated[
        ErrorType | None, typer.Option("--type", help="Only this failure type.")
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Only dead (given up) images.")] = False,
    library: LibraryOption = None,
    as_json: JsonOption = False,
) -> None:
    """One row per failing image: path, error type, attempts, last error, next retry."""
    rows = run(lambda q, _: inspection.failures(q, error_type, dead, library), dsn, data_dir)
    emit({"failures": rows}, as_json, inspection.failures_text(rows))


def faces(
    path: Annotated[
        Path, typer.Argument(help="A scanned image file (relative to the root with --library).")
    ],
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    library: LibraryOption = None,
    as_json: JsonOption = False,
) -> None:
    """The faces of one image, in original pixels as a person sees it."""
    result = run(lambda q, _: inspection.faces(q, path, library), dsn, data_dir)
    emit(result, as_json, inspection.faces_text(result))


def requeue(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Only these image files (each must be a registered image).", metavar="PATH"
        ),
    ] = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    dead: Annotated[bool, typer.Option("--dead", help="Only dead images.")] = False,
    error_type: Annotated[
        ErrorType | None, typer.Option("--type", help="Only this failure type.")
    ] = None,
    library: LibraryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make failed images runnable again now, with a fresh attempt budget.

    Without PATH: the failing images of every library (or of --library)."""
    count = run(
        lambda q, _: inspection.requeue(q, paths or [], dead, error_type, library), dsn, data_dir
    )
    emit(
        {"requeued": count},
        as_json,
        f"requeued {commands.plural(count, 'image')}: the next `facescan scan` or the "
        "operator's next tick runs them",
    )


def rescan(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Scanned directories or registered image files (default: every library, "
            "or --library).",
            metavar="PATH",
        ),
    ] = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every done image, not only the degraded ones.")
    ] = False,
    library: LibraryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue done images again from the first cascade step, for full-quality results.

    Without --all only degraded results (found at a reduced scale or with hog after the
    model ran out of memory). Their faces stay until the new result replaces them; the
    next `facescan scan` (with the model and --max-dimension it is given) or the
    operator's next tick detects them."""
    count = run(lambda q, _: inspection.rescan(q, paths or [], every, library), dsn, data_dir)
    emit(
        {"rescanned": count},
        as_json,
        f"queued {commands.plural(count, 'image')} again: the next `facescan scan` or the "
        "operator's next tick detects them",
    )
