"""The administrator's commands: `db migrate`, `db grant`, `import-legacy` and
`operator` (registered in cli.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
from pydantic import SecretStr

from facescan_operator import commands
from facescan_operator.cli_common import (
    EXIT_DATABASE,
    EXIT_USAGE,
    DataDirOption,
    DsnOption,
    JsonOption,
    UsageCommand,
    database,
    emit,
    run,
)
from facescan_queue.errors import InvalidArgument, QueueError
from facescan_queue.migrate import grant_library, migrate
from facescan_queue.settings import DatabaseSettings, DsnError

T = TypeVar("T")


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


db_app = typer.Typer(
    help="Manage the facescan database.", no_args_is_help=True, rich_markup_mode=None
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
    url, embedded = database(dsn, data_dir, create=create)
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
    result = run(
        lambda q, url: commands.import_legacy(q, url, root, library), dsn, data_dir, create=True
    )
    emit(result, as_json, commands.import_text(result))


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
