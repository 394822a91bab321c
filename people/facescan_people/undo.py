"""`people undo`: reverses a library's last merge, move or removal not undone yet.

Called by the `facescan people undo` command; reads what facescan_people.actions logged
in facescan.people_actions, in one transaction holding the library's matching lock.
A face changed since the action (matched, moved or removed again) is left as it is now,
and counted as skipped; so is one whose person has another face of its photo by now.
"""

from __future__ import annotations

import json
from typing import Any

from facescan_people.actions import Row, write_rows
from facescan_people.errors import AmbiguousPerson, DuplicatePerson, NothingToUndo
from facescan_people.repository import PeopleDb, Tx


async def undo(db: PeopleDb, library: str | None) -> dict[str, Any]:
    """Undoes the newest action of ``library`` (or of the one library that has any)."""
    libraries = [r[0] for r in await db.fetch("undoable_libraries", library)]
    if not libraries:
        where = f" in library {library}" if library else ""
        raise NothingToUndo(f"nothing to undo{where}: no merge, move or removal left")
    if len(libraries) > 1:
        raise AmbiguousPerson(
            f"actions to undo are in several libraries ({', '.join(libraries)}): say which "
            "with --library"
        )
    lib = libraries[0]
    async with db.transaction(lib) as tx:
        action = (await tx.fetch("last_action", lib))[0]
        data = json.loads(action["undo"])
        if action["action"] == "merge":
            restored, skipped = await _unmerge(tx, lib, data)
        elif action["action"] == "move":
            restored, skipped = await _restore(tx, data["before"], now_person=data["person"])
            await tx.fetch("reject", data["unrejected"], [data["person"]] * len(data["unrejected"]))
            if data.get("new") and not await tx.fetch("person_rows", data["person"]):
                await tx.fetch("delete_person", data["person"])  # made by the move, empty again
        else:
            restored, skipped = await _restore(tx, data["before"], now_person=None)
            pairs = data["rejected"]
            await tx.fetch("unreject", [p[0] for p in pairs], [p[1] for p in pairs])
        await tx.fetch("mark_undone", action["id"])
        await tx.fetch("refeature", lib)
    return {
        "library": lib,
        "undone": action["summary"],
        "action": action["action"],
        "restored": restored,
        "skipped": skipped,
    }


async def _restore(tx: Tx, before: list[Row], *, now_person: int | None) -> tuple[int, int]:
    """Puts the faces back as they were, those still as the action left them: held by
    ``now_person`` from the user (a move), or nobody's (a removal)."""
    current = {r["face_id"]: r for r in await tx.fetch("faces_info", [b[0] for b in before])}
    unchanged = [
        b
        for b in before
        if b[0] in current
        and current[b[0]]["person_id"] == now_person
        and (now_person is None or current[b[0]]["source"] == "user")
    ]
    rows = await _placeable(tx, unchanged)
    await write_rows(tx, rows)
    return len(rows), len(before) - len(rows)


async def _placeable(tx: Tx, rows: list[Row]) -> list[Row]:
    """The rows whose person still exists and has no other face of the photo (a person
    gone: the face is nobody's, still considered)."""
    people = {r[2] for r in rows if r[2] is not None}
    alive = {p for p in people if await tx.fetch("person_by_id", p, None)}
    keys = sorted({(r[2], r[1]) for r in rows if r[2] in alive})
    taken = {(h.person_id, h.image_id): h.face_id for h in await tx.holders(keys)}
    out: list[Row] = []
    for r in rows:
        if r[2] is not None and r[2] not in alive:
            out.append([r[0], r[1], None, None, None, None, True])
        elif r[2] is None or taken.get((r[2], r[1]), r[0]) == r[0]:
            out.append(r)
    return out


async def _unmerge(tx: Tx, library: str, data: dict[str, Any]) -> tuple[int, int]:
    """Makes the merged person again (same id, name, hidden, featured face) and gives
    them back their faces still with the person they were merged into."""
    person, into = data["person"], data["into"]
    if data["renamed"]:
        await tx.fetch("name_person", into, None)
    if person["name"] is not None and await tx.fetch("people_named", person["name"], library):
        raise DuplicatePerson(
            f"cannot undo the merge: the name {person['name']!r} is taken in library "
            f"{library} again (rename that person first)"
        )
    await tx.fetch(
        "restore_person",
        person["id"],
        library,
        person["name"],
        person["hidden"],
        person["featured_face"],
        person["created_at"],
    )
    current = {r["face_id"]: r for r in await tx.fetch("faces_info", [f[0] for f in data["faces"]])}
    back = [
        [f[0], f[1], person["id"], f[2], f[3], f[4], True]
        for f in data["faces"]
        if f[0] in current and current[f[0]]["person_id"] == into
    ]
    await write_rows(tx, back)
    rejected = data["rejections"]
    await tx.fetch("reject", rejected, [person["id"]] * len(rejected))
    added = data["added_rejections"]
    await tx.fetch("unreject", added, [into] * len(added))
    return len(back), len(data["faces"]) - len(back)
