"""`facescan people`: match faces to known people (add, list, show, rename, hide, sync);
cluster, merge, move, remove, undo and suggest are people_actions_cli.py's, registered here.

Registered in cli.py as the `people` sub-app; its options and the way it opens the
database are every command's (cli_common.py). Each command opens the database as the
others do (--dsn or the embedded one in --data-dir) and calls facescan_people; its
bad-input errors (unknown or duplicate person, empty name, a photo
never scanned or without that face) exit 2 with their message, never a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from facescan_operator import commands, people_actions_cli
from facescan_operator.cli_common import (
    DataDirOption,
    DsnOption,
    JsonOption,
    LibraryOption,
    UsageCommand,
    emit,
)
from facescan_people import directory
from facescan_people.enrol import Enrolled, Reference, add_person
from facescan_people.errors import (
    FaceChoiceNeeded,
    MixedLibraries,
    NoFace,
    NotScanned,
)
from facescan_people.repository import PeopleDb
from facescan_queue.errors import UnknownImage
from facescan_queue.repository import Queue
from facescan_queue.types import ImageState

T = TypeVar("T")

people_app = typer.Typer(
    help="Match faces to known people: add a person from a photo, and facescan finds them "
    "in the other photos.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
NameArgument = Annotated[str, typer.Argument(help="The person's name.", metavar="NAME")]


def _people(
    main: Callable[[PeopleDb, Queue], Awaitable[T]], dsn: str | None, data_dir: Path | None
) -> T:
    """Runs ``main`` on the database as every command does; bad input exits 2."""
    return people_actions_cli.people_command(main, dsn, data_dir)


@people_app.command("add", cls=UsageCommand)
def add(
    name: NameArgument,
    photos: Annotated[
        list[Path],
        typer.Argument(
            help="Photos of the person, already scanned (`facescan scan`).", metavar="PHOTO"
        ),
    ],
    face: Annotated[
        list[int] | None,
        typer.Option(
            "--face",
            min=1,
            help="Which face of a photo with several is the person, numbered as `facescan "
            "faces PHOTO` lists them (from 1, left to right); once for every photo, or once "
            "per PHOTO in order.",
        ),
    ] = None,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a person from photos of them, and match them in the library's other photos.

    Faces within the auto-tag distance of a reference face are tagged, those up to the
    match distance are pending (suggestions); faces the user gave someone stay theirs."""
    result = _people(
        lambda db, queue: _add(db, queue, name, photos, face or [], library), dsn, data_dir
    )
    others = result.matched - result.references
    text = (
        f"added {result.name} from {commands.plural(result.references, 'reference face')}: "
        f"{commands.plural(others, 'other face')} tagged, {result.pending} pending "
        f"(`facescan people show {_quote(result.name)}` lists them)"
    )
    emit(result.as_json(), as_json, text)


async def _add(
    db: PeopleDb,
    queue: Queue,
    name: str,
    photos: list[Path],
    faces: list[int],
    library: str | None,
) -> Enrolled:
    if len(faces) not in (0, 1, len(photos)):
        raise NoFace(f"give --face once, or once per PHOTO ({len(photos)}), not {len(faces)} times")
    references: list[Reference] = []
    libraries: set[str] = set()
    for i, photo in enumerate(photos):
        try:
            lib, relative = await commands.locate(queue, photo, library)
            image = await queue.image(lib, relative)
        except UnknownImage as exc:
            raise NotScanned(
                f"{photo} was never scanned ({exc}): run `facescan scan DIR` on the directory "
                "that holds it first"
            ) from exc
        if image["state"] != ImageState.DONE:
            raise NotScanned(
                f"the faces of {photo} are not detected yet (it is {image['state']}): run "
                "`facescan scan` first (`facescan failures` says why an image failed)"
            )
        rows = await directory.faces_of_image(db, image["id"])
        if not rows:
            raise NoFace(f"no face was found in {photo}: choose a photo of the person's face")
        if len(faces) == len(photos):
            wanted = faces[i]
        elif faces and len(rows) > 1:
            wanted = faces[0]  # given once: for every photo with several faces
        elif len(rows) == 1:
            wanted = 1
        else:
            raise FaceChoiceNeeded(
                f"{photo} has {len(rows)} faces: say which is {name.strip()!r} with "
                f"--face N:\n{_listing(rows)}"
            )
        if wanted > len(rows):
            raise NoFace(
                f"{photo} has {commands.plural(len(rows), 'face')}, no face {wanted}:\n"
                + _listing(rows)
            )
        row = rows[wanted - 1]
        references.append(Reference(row["face_id"], image["id"], str(photo)))
        libraries.add(lib)
    if len(libraries) > 1:
        raise MixedLibraries(
            "the photos are in different libraries (" + ", ".join(sorted(libraries)) + "): "
            "a person belongs to one library"
        )
    return await add_person(db, libraries.pop(), name, references)


def _listing(rows: list[Any]) -> str:
    lines = []
    for n, r in enumerate(rows, 1):
        who = f"{r['person']}, {r['status']}" if r["person"] else "nobody's"
        lines.append(
            f"  --face {n}: top {r['box_top']} right {r['box_right']} bottom "
            f"{r['box_bottom']} left {r['box_left']} ({who})"
        )
    return "\n".join(lines)


def _quote(name: str) -> str:
    return f'"{name}"' if any(c in name for c in " '\"$`\\") else name


@people_app.command("list", cls=UsageCommand)
def list_people(
    library: LibraryOption = None,
    after: Annotated[
        str | None,
        typer.Option(help="Continue after this cursor (the `next` a listing printed)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="People per page.")] = 100,
    every: Annotated[bool, typer.Option("--all", help="Hidden people too.")] = False,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """The known people by name, with how many faces are theirs (tagged and pending)."""
    people, cursor = _people(
        lambda db, _: directory.list_people(db, library, after=after, limit=limit, hidden=every),
        dsn,
        data_dir,
    )
    lines = [
        f"{p.display}\t{commands.plural(p.matched, 'face')}, {p.pending} pending\t{p.library}"
        + ("\thidden" if p.hidden else "")
        for p in people
    ]
    if not people and after is None:
        lines.append("no people yet: `facescan people add NAME PHOTO` adds one")
    if cursor:
        lines.append(f"more: facescan people list --after {cursor}")
    emit({"people": [p.as_json() for p in people], "next": cursor}, as_json, "\n".join(lines))


@people_app.command("show", cls=UsageCommand)
def show(
    name: NameArgument,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """A person's faces: image path, status (matched or pending), source, distance (and,
    with --json, face ids and the face shown for them: `people feature`)."""
    result = _people(lambda db, _: directory.show(db, name, library), dsn, data_dir)
    faces = result["faces"]
    pending = sum(f["status"] == "pending" for f in faces)
    lines = [
        f"{result['display']} ({result['library']}): "
        f"{commands.plural(len(faces) - pending, 'face')}"
        f", {pending} pending" + (", hidden" if result["hidden"] else "")
    ]
    for f in faces:
        distance = "" if f["distance"] is None else f"\t{f['distance']:.3f}"
        lines.append(f"  {f['path']}\t{f['status']}\t{f['source']}{distance}")
    emit(result, as_json, "\n".join(lines))


@people_app.command("rename", cls=UsageCommand)
def rename(
    old: Annotated[str, typer.Argument(help="The person's name now.", metavar="OLD")],
    new: Annotated[str, typer.Argument(help="The new name.", metavar="NEW")],
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Rename a person (the name must be free in their library)."""
    renamed = _people(lambda db, _: directory.rename(db, old, new, library), dsn, data_dir)
    print(f"renamed {old.strip()} to {renamed}")


@people_app.command("hide", cls=UsageCommand)
def hide(
    name: NameArgument,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Hide a person from `people list` (their faces stay theirs; `unhide` shows them)."""
    _people(lambda db, _: directory.hide(db, name, library), dsn, data_dir)
    print(f"hid {name.strip()}")


@people_app.command("unhide", cls=UsageCommand)
def unhide(
    name: NameArgument,
    library: LibraryOption = None,
    dsn: DsnOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show a hidden person in `people list` again."""
    _people(lambda db, _: directory.hide(db, name, library, hidden=False), dsn, data_dir)
    print(f"unhid {name.strip()}")


people_actions_cli.register(people_app)
