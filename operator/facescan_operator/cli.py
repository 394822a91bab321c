"""`facescan`: scan a photo library on this machine and inspect the queue.

Every command but `operator` takes --dsn (a PostgreSQL URL; FACESCAN_DSN, or a file named
by FACESCAN_DSN_FILE) or --data-dir (the embedded PostgreSQL's directory, used when no
DSN is given). Exit codes: 0 success (failed images are data, not errors), 2 usage error
(a malformed database URL included) or unknown image or library, 3
database error, 4 the detectors of `scan` cannot run (they cannot start, or the scan
started the most processes it may), 5 `register` refused (an unreadable or empty library
root: nothing marked missing), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
The README has the table of every code and its causes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from pydantic import SecretStr

from facescan_operator import commands
from facescan_operator.embedded_db import (
    EmbeddedDatabase,
    EmbeddedDatabaseError,
    default_data_dir,
)
from facescan_operator.registration import RegistrationRefused
from facescan_operator.workers import DetectorsCannotRun
from facescan_queue.defaults import DEFAULT_MAX_DIMENSION
from facescan_queue.errors import InvalidArgument, QueueError, UnknownImage, UnknownLibrary
from facescan_queue.migrate import grant_library, migrate, migrate_if_owner
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings, DsnError, parse_dsn, read_dsn_file
from facescan_queue.types import ErrorType

T = TypeVar("T")


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


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


db_app = typer.Typer(
    help="Manage the facescan database.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(db_app, name="db")

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


def _database(dsn: str | None, data_dir: Path | None, *, create: bool) -> tuple[str, Any]:
    """The database URL to use, checked (a malformed one is a usage error whose message
    quotes none of it), and the embedded database started for it if there is no URL."""
    try:
        if not dsn and os.environ.get("FACESCAN_DSN_FILE"):
            dsn = read_dsn_file(Path(os.environ["FACESCAN_DSN_FILE"]))
        if dsn:
            parse_dsn(dsn)
    except DsnError as exc:
        _fail(str(exc))
    if dsn:
        return dsn, None
    directory = data_dir or default_data_dir()
    if not create and not (directory / "PG_VERSION").exists():
        _fail(f"no facescan database in {directory}: run `facescan scan DIR` first, or give --dsn")
    try:
        embedded = EmbeddedDatabase(directory)
    except EmbeddedDatabaseError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE if exc.usage else EXIT_DATABASE) from None
    return embedded.dsn, embedded


def _run(
    main: Callable[[Queue, str], Awaitable[T]],
    dsn: str | None,
    data_dir: Path | None,
    *,
    create: bool = False,
) -> T:
    url, embedded = _database(dsn, data_dir, create=create)
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


def _fail(message: str) -> None:
    print(f"facescan: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        print(text)


@app.command(cls=UsageCommand)
def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Directories (or image files) to scan.", exists=True, metavar="PATH"),
    ],
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    model: Annotated[
        commands.Model,
        typer.Option(
            help="Detection model; cnn and insightface "
            "step down a cascade (smaller scales, then hog) when memory runs out."
        ),
    ] = commands.Model.HOG,
    workers: Annotated[
        int,
        typer.Option(min=1, max=1024, help="Detector processes at once (default: number of CPUs)."),
    ] = os.cpu_count() or 1,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Most memory one detector may use, e.g. 2G or 512M; enforced like a "
            f"container limit; at least {commands.min_memory_limit(commands.Model.HOG) >> 20}M, "
            "what a detector needs to load its model and start an image.",
        ),
    ] = None,
    max_dimension: Annotated[
        int,
        typer.Option(
            min=0,
            help=f"Cap on the long side before detection: 0 (none) or at least "
            f"{commands.MIN_MAX_DIMENSION}.",
        ),
    ] = DEFAULT_MAX_DIMENSION,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10000, help="Images per detector process.")
    ] = 25,
    image_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds per image before it fails as timeout.")
    ] = 300.0,
    model_dir: Annotated[
        Path | None, typer.Option(help="InsightFace ONNX models (det_*.onnx, w600k_*.onnx).")
    ] = None,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="Redo the images done with another model or max dimension (otherwise they "
            "are kept, and counted in the summary).",
        ),
    ] = False,
    progress_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="When stderr is not a terminal: a progress line every this many seconds "
            "(0: none). On a terminal a progress bar with rate and time left.",
        ),
    ] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Register every image under PATH and detect faces until none is runnable now.

    Images are regular files ending in .jpg, .jpeg, .png, .heic, .heif, .webp, .gif, .bmp,
    .tif or .tiff (any case) under PATH, recursively; symbolic links (an image linked
    from within PATH is registered once, by its own path), FIFOs, devices, hidden
    directories (names starting with a dot) and other files are skipped. Images already
    done are not redone: running it
    again resumes; done with another --model or --max-dimension, they are kept unless
    --rescan. Images that fail are retried with backoff and listed by `facescan
    failures`. The summary lists each image's faces for 30 images or fewer, then the
    counts.

    Exit codes: 0 done (failed images are data), 2 usage, 3 database, 4 the detectors
    cannot run (model files missing, a memory limit too small for them to start).
    """
    try:
        commands.check_max_dimension(max_dimension)
        limit = commands.check_memory_limit(memory_limit, model) if memory_limit else None
    except ValueError as exc:
        _fail(str(exc))
        return
    terminal = sys.stderr.isatty() and not as_json
    options = commands.ScanOptions(
        model=model,
        workers=workers,
        memory_limit=limit,
        max_dimension=max_dimension,
        batch_size=batch_size,
        image_timeout_s=image_timeout,
        model_dir=model_dir,
        progress=terminal,
        progress_every_s=None if terminal or progress_every == 0 else progress_every,
        rescan=rescan,
    )
    summary = _run(lambda q, url: commands.scan(q, url, paths, options), dsn, data_dir, create=True)
    _emit(summary.as_json(), as_json, summary.text())


@app.command(cls=UsageCommand)
def register(
    root: Annotated[
        Path,
        typer.Argument(
            help="The library root: every image under it is registered, by its path relative "
            "to it.",
            exists=True,
            file_okay=False,
        ),
    ],
    library: Annotated[
        str | None,
        typer.Option(
            "--library",
            help="Library name, e.g. the <namespace>/<name> of a FaceScan whose pods mount ROOT "
            "(default: ROOT's absolute path, as `facescan scan` names it).",
        ),
    ] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="A ROOT without any image marks every image of the library missing "
            "(otherwise refused, exit 5: an unmounted volume looks empty).",
        ),
    ] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register the images under ROOT without detecting: reads only their headers.

    For a cluster: run it where the photos are, against the FaceScan's database, and the
    operator's Jobs detect them. Running it again registers new files, queues changed
    ones (another size or modification time) again with their old faces deleted, and,
    when every directory under ROOT could be read, marks the registered images whose file
    is gone missing (not detected, faces kept, counted by `status`) until it is back.

    Exit codes: 0 registered, 2 usage, 3 database, 5 refused, nothing registered or marked
    missing: ROOT cannot be read, or has no image while the library has (--allow-empty).
    """
    try:
        result = _run(
            lambda q, _: commands.register(q, root, library, allow_empty=allow_empty),
            dsn,
            data_dir,
            create=True,
        )
    except RegistrationRefused as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_REFUSED) from None
    _emit(result, as_json, commands.register_text(result))


@app.command(cls=UsageCommand)
def status(
    dsn: DsnOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Counts of every library: images, done, faces, retrying, dead, degraded."""
    totals, per_library = _run(commands.status, dsn, data_dir)
    data = {**totals.as_json(), "libraries": {k: v.as_json() for k, v in per_library.items()}}
    _emit(data, as_json, commands.status_text(totals, per_library))


@app.command(cls=UsageCommand)
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
    rows = _run(lambda q, _: commands.failures(q, error_type, dead, library), dsn, data_dir)
    _emit({"failures": rows}, as_json, commands.failures_text(rows))


@app.command(cls=UsageCommand)
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
    result = _run(lambda q, _: commands.faces(q, path, library), dsn, data_dir)
    _emit(result, as_json, commands.faces_text(result))


@app.command(cls=UsageCommand)
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
    count = _run(
        lambda q, _: commands.requeue(q, paths or [], dead, error_type, library), dsn, data_dir
    )
    _emit(
        {"requeued": count},
        as_json,
        f"requeued {commands.plural(count, 'image')}: the next `facescan scan` or the "
        "operator's next tick runs them",
    )


@app.command(cls=UsageCommand)
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
    count = _run(lambda q, _: commands.rescan(q, paths or [], every, library), dsn, data_dir)
    _emit(
        {"rescanned": count},
        as_json,
        f"queued {commands.plural(count, 'image')} again: the next `facescan scan` or the "
        "operator's next tick detects them",
    )


def _admin(
    dsn: str | None,
    data_dir: Path | None,
    call: Callable[[DatabaseSettings], Coroutine[Any, Any, T]],
    *,
    create: bool,
    usage: type[QueueError],
) -> T:
    """Runs an admin call on the database (no queue pool): ``usage`` errors exit 2, other
    queue errors 3; an embedded database started for it is stopped after."""
    url, embedded = _database(dsn, data_dir, create=create)
    try:
        return asyncio.run(call(DatabaseSettings(dsn=SecretStr(url))))
    except usage as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    except QueueError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_DATABASE) from None
    finally:
        if embedded is not None:
            embedded.stop()


@db_app.command("migrate", cls=UsageCommand)
def db_migrate(dsn: DsnOption = None, data_dir: DataDirOption = None) -> None:
    """Create or upgrade the facescan schema (idempotent)."""
    report = _admin(dsn, data_dir, migrate, create=True, usage=DsnError)
    applied = ", ".join(report.applied) or "nothing to apply"
    print(f"schema version {report.from_version} -> {report.to_version} ({applied})")
    for note in report.notes:
        print(f"note: {note}")


@db_app.command("grant")
def db_grant(
    role: Annotated[
        str, typer.Option("--role", help="An existing database role (CREATE ROLE ... LOGIN).")
    ],
    library: Annotated[
        str, typer.Option("--library", help="The library, e.g. a FaceScan's <namespace>/<name>.")
    ],
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="Also the operator's calls (register, claim, release, requeue, status), "
            "not only a detector's (start, commit, fail, heartbeat).",
        ),
    ] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Let ROLE use one library through the queue's functions, and nothing else.

    Run as the owner of the facescan schema. ROLE gets USAGE on the schema, SELECT on
    facescan.schema_version and the library: no table privilege, no other library, no
    change to the schema. Grants add up (run once per library)."""
    _admin(
        dsn,
        data_dir,
        lambda settings: grant_library(settings, role, library, operator=operator),
        create=False,
        usage=InvalidArgument,  # no such role
    )
    calls = "the operator's and a detector's calls" if operator else "a detector's calls"
    print(f"role {role} may use library {library} for {calls}")


@app.command("import-legacy", cls=UsageCommand)
def import_legacy(
    root: Annotated[Path, typer.Option(help="Library root the legacy image paths are under.")],
    library: Annotated[
        str | None,
        typer.Option(
            "--library",
            help="Library name, e.g. a FaceScan's <namespace>/<name> (default: ROOT's "
            "absolute path).",
        ),
    ] = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register the images of the older worker's ai_metadata(image_path, is_processed) table.

    Images it never processed are queued first; images it marked processed are queued
    too, because it marked failures processed with 0 faces.
    """
    result = _run(
        lambda q, url: commands.import_legacy(q, url, root, library), dsn, data_dir, create=True
    )
    _emit(result, as_json, commands.import_text(result))


@app.command(cls=UsageCommand)
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Watch only these namespaces (default: the whole cluster)."
        ),
    ] = None,
    health_address: Annotated[
        str,
        typer.Option(
            help="Address the liveness/readiness endpoint (/healthz) binds: 0.0.0.0 every "
            "interface (in a pod, for the kubelet's probes), 127.0.0.1 this machine only."
        ),
    ] = "0.0.0.0",
    health_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Port of the liveness/readiness endpoint (0: none, for an operator run by "
            "hand that nothing probes).",
        ),
    ] = 8081,
    peering: Annotated[
        str | None,
        typer.Option(
            help="kopf peering name (default: standalone): of the operators in one peering, "
            "only the one of highest --priority reconciles, the others wait; e.g. one run "
            "by hand next to the cluster's."
        ),
    ] = None,
    priority: Annotated[
        int, typer.Option(help="This operator's priority in its peering (the highest runs).")
    ] = 0,
    log_level: Annotated[
        LogLevel,
        typer.Option(envvar="FACESCAN_LOG_LEVEL", show_envvar=True, help="Least level logged."),
    ] = LogLevel.INFO,
) -> None:
    """Run the Kubernetes operator: reconcile every FaceScan (kopf).

    It reads the database URL of each FaceScan from the Secret its spec names, and
    serves Prometheus metrics on $FACESCAN_METRICS_ADDRESS (default 0.0.0.0) port
    $FACESCAN_METRICS_PORT (default 8080; 0: no metrics server).
    """
    import kopf

    from facescan_operator.k8s import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(debug=log_level is LogLevel.DEBUG, quiet=log_level is not LogLevel.INFO)
    if log_level is LogLevel.ERROR:
        logging.getLogger().setLevel(logging.ERROR)
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or (),
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        liveness_endpoint=liveness_endpoint(health_address, health_port) if health_port else None,
    )


def liveness_endpoint(address: str, port: int) -> str:
    """The URL kopf serves /healthz on; an IPv6 address goes in brackets."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"http://{host}:{port}/healthz"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
