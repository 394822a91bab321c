"""`facescan people sync|cluster|merge|move|feature|remove|undo|suggest`: the new faces
matched to the known people, unnamed people from the faces nobody has, and the user's
corrections.

Registered on the `people` sub-app by people_cli.py (:func:`register`); opens the
database as every command does (cli_common.run) and calls facescan_people's sync,
clustering, recluster, actions and undo. Bad input (an unknown person or face, a merge or move that
would give a person two faces of one photo, nothing to undo) exits 2 with its message.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from facescan_operator import commands
from facescan_operator.cli_common import (
    EXIT_USAGE,
    DataDirOption,
    DsnOption,
    JsonOption,
    LibraryOption,
    UsageCommand,
    emit,
    run,
)
from facescan_people import actions
from facescan_people.clustering import BATCH_SIZE, ClusterReport, cluster_incremental
from facescan_people.errors import PeopleError
from facescan_people.models import SyncReport
from facescan_people.recluster import cluster_full
from facescan_people.repository import PeopleDb
from facescan_people.sync import BATCH_SIZE as SYNC_BATCH_SIZE
from facescan_people.sync import sync
from facescan_people.undo import undo as undo_last
from facescan_queue.repository import Queue

T = TypeVar("T")

SHOWN_UNASSIGNED = 20
"""Unassigned faces `people cluster` lists in its text (`--json` lists them all)."""

FacesArgument = Annotated[
    list[int],
    typer.Argument(
        help="Face ids (`facescan faces PHOTO --json`, `facescan people show NAME --json`).",
        metavar="FACE_ID",
    ),
]


def people_command(
    main: Callable[[PeopleDb, Queue], Awaitable[T]], dsn: str | None, data_dir: Path | None
) -> T:
    """Runs ``main`` on the database as every command does; bad input exits 2."""
    try:
        return run(lambda queue, _: main(PeopleDb(queue), queue), dsn, data_dir)
    except PeopleError as exc:
        print(f"facescan: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


def sync_people(
    library: LibraryOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10000, help="Faces matched per transaction.")
    ] = SYNC_BATCH_SIZE,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Then group the faces nobody has into unnamed people, as `people cluster` "
            "does (incremental).",
        ),
    ] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Match every face new since the last sync to the known people.

    Each batch of faces is committed in one transaction: a sync stopped at any moment
    loses nothing, and the next one goes on where it stopped. `facescan scan` runs it,
    and the clustering, when detection has settled; so does the operator's people Job."""

    async def main(db: PeopleDb, queue: Queue) -> tuple[SyncReport, dict[str, ClusterReport]]:
        libraries = await commands.libraries(queue, library)
        report = await sync(db, libraries, batch_size=batch_size)
        clustered = {}
        if cluster:
            for lib in libraries:
                clustered[lib] = await cluster_incremental(db, lib, batch_size=batch_size)
        return report, clustered

    report, clustered = people_command(main, dsn, data_dir)
    data: dict[str, Any] = report.as_json()
    if cluster:
        data["clustered"] = {lib: r.as_json() for lib, r in clustered.items()}
    emit(data, as_json, "\n".join([report.text()] + [r.text(k) for k, r in clustered.items()]))


def cluster(
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Re-cluster every face (HDBSCAN) in one transaction instead of the faces "
            "nobody has, one at a time.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10000, help="Faces clustered per transaction.")
    ] = BATCH_SIZE,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Group the faces nobody has into unnamed people ("unnamed #ID"; rename to name one).

    By default each face nobody has joins the people its nearest faces are, or starts an
    unnamed person with them, a batch per transaction (stopped at any moment, it loses
    nothing). --full re-clusters every face: named people and the user's assignments are
    kept, unnamed people found again. Clusters under min_faces stay unassigned, listed."""

    async def main(db: PeopleDb, queue: Queue) -> list[tuple[str, ClusterReport]]:
        done = []
        for lib in await commands.libraries(queue, library):
            if full:
                done.append((lib, await cluster_full(db, lib)))
            else:
                done.append((lib, await cluster_incremental(db, lib, batch_size=batch_size)))
        return done

    reports = people_command(main, dsn, data_dir)
    lines = []
    for lib, r in reports:
        lines.append(r.text(lib))
        for face in r.unassigned[:SHOWN_UNASSIGNED]:
            lines.append(f"  face {face['face_id']}\t{face['path']}")
        if len(r.unassigned) > SHOWN_UNASSIGNED:
            lines.append(f"  … {len(r.unassigned) - SHOWN_UNASSIGNED} more (--json lists all)")
    data = {"libraries": [{"library": lib, **r.as_json()} for lib, r in reports]}
    emit(data, as_json, "\n".join(lines))


def merge(
    into: Annotated[str, typer.Argument(help="The person who stays.", metavar="A")],
    other: Annotated[str, typer.Argument(help="The person merged into A.", metavar="B")],
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge B into A: B's faces become A's and B is deleted (an unnamed A takes B's name).

    Refused when A and B both have a face in one photo (the message names them)."""
    result = people_command(lambda db, _: actions.merge(db, into, other, library), dsn, data_dir)
    text = (
        f"merged {result['merged']} into {result['into']}: "
        f"{commands.plural(result['faces'], 'face')} moved (`facescan people undo` undoes it)"
    )
    emit(result, as_json, text)


def move(
    faces: FacesArgument,
    to: Annotated[str, typer.Option("--to", help="The person the faces are.", metavar="NAME")],
    new: Annotated[
        bool, typer.Option("--new", help="NAME is a new person: make them, with these faces.")
    ] = False,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give faces to a person (as the user's: matching never moves them again).

    With --new the person is made in the same step (`people undo` deletes them again)."""
    result = people_command(
        lambda db, _: actions.move(db, faces, to, library, new=new), dsn, data_dir
    )
    who = f"new person {result['person']}" if result["new"] else result["person"]
    emit(result, as_json, f"moved {commands.plural(len(result['faces']), 'face')} to {who}")


def feature(
    name: Annotated[str, typer.Argument(help="The person's name, or #ID.", metavar="NAME")],
    face: Annotated[
        int,
        typer.Argument(help="One of their faces (`people show NAME --json`).", metavar="FACE_ID"),
    ],
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Choose the face shown for a person (`people show --json`: featured_face)."""
    result = people_command(lambda db, _: actions.feature(db, name, face, library), dsn, data_dir)
    emit(result, as_json, f"{result['person']} is shown by face {result['featured_face']}")


def remove(
    faces: FacesArgument,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take faces from their person: nobody's, never given back to them automatically."""
    result = people_command(lambda db, _: actions.remove(db, faces), dsn, data_dir)
    text = f"removed {commands.plural(len(result['faces']), 'face')} from " + ", ".join(
        result["from"]
    )
    emit(result, as_json, text)


def undo(
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo the library's last merge, move or remove (again: the one before)."""
    result = people_command(lambda db, _: undo_last(db, library), dsn, data_dir)
    text = f"undid: {result['undone']} ({result['restored']} faces restored"
    text += (
        f", {result['skipped']} changed since and left as they are)" if result["skipped"] else ")"
    )
    emit(result, as_json, text)


def suggest(
    name: Annotated[str, typer.Argument(help="The person's name, or #ID.", metavar="NAME")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="Suggestions at most.")] = 10,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Merge suggestions: the people whose reference faces are nearest this person's."""
    result = people_command(lambda db, _: actions.suggest(db, name, library, limit), dsn, data_dir)
    lines = [f"nearest to {result['person']} ({result['library']}):"]
    for s in result["suggestions"]:
        lines.append(
            f"  {s['display']}\t{s['distance']:.3f}\t{commands.plural(s['faces'], 'face')}"
        )
    if not result["suggestions"]:
        lines.append("  nobody: no other person has a face of the same model")
    emit(result, as_json, "\n".join(lines))


def register(app: typer.Typer) -> None:
    """Adds these commands to the `people` sub-app."""
    for name, command in (
        ("sync", sync_people),
        ("cluster", cluster),
        ("merge", merge),
        ("move", move),
        ("feature", feature),
        ("remove", remove),
        ("undo", undo),
        ("suggest", suggest),
    ):
        app.command(name, cls=UsageCommand)(command)
