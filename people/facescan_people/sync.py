"""`people sync`: match every face new to matching to the known people of its library.

Called by the `facescan people sync` command and by `facescan scan` once detection has
settled. Loss-free: each batch of faces is matched and written in one transaction (the
library's matching lock held), so a sync killed at any moment leaves every face either
considered, with whatever matching decided for it, or untouched; the next sync takes up
the untouched ones. A library without people costs one query and records nothing (the
first `people add` looks for its faces through the index).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from facescan_people.matching import decide, nearest
from facescan_people.models import Status, SyncReport
from facescan_people.repository import PeopleDb, Tx

BATCH_SIZE = 500
"""Faces matched and committed per transaction."""

NEIGHBOURS = 5
"""Reference faces each new face is compared with: its nearest, through the index."""


async def sync(
    db: PeopleDb,
    libraries: Iterable[str],
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[SyncReport], Awaitable[None]] | None = None,
) -> SyncReport:
    """Matches the new faces of each library; ``on_batch`` hears of each committed batch."""
    report = SyncReport()
    for library in libraries:
        report += await sync_library(db, library, batch_size=batch_size, on_batch=on_batch)
    return report


async def sync_library(
    db: PeopleDb,
    library: str,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[SyncReport], Awaitable[None]] | None = None,
) -> SyncReport:
    """Matches the library's new faces, a batch per transaction, in face id order."""
    report = SyncReport()
    after = 0
    while True:
        async with db.transaction(library) as tx:
            report.people = await tx.people_count(library)
            if report.people == 0:
                return report
            faces = await tx.new_faces(library, after, batch_size)
            if not faces:
                return report
            batch = await _match(tx, library, faces)
        report += batch
        after = faces[-1][0]
        if on_batch is not None:
            await on_batch(batch)


async def _match(tx: Tx, library: str, faces: list[tuple[int, int]]) -> SyncReport:
    """Matches (face, image) pairs new to matching and records every one of them."""
    thresholds = await tx.thresholds(library)
    ids = [face for face, _ in faces]
    candidates = nearest(await tx.nearest_references(library, ids, NEIGHBOURS))
    holders = await tx.holders(sorted({(c.person_id, c.image_id) for c in candidates}))
    decision = decide(candidates, holders, thresholds)
    await tx.unassign(decision.unassign)
    assigned = {a.face_id for a in decision.assign}
    await tx.record(decision.assign, [(f, i) for f, i in faces if f not in assigned])
    return SyncReport(
        considered=len(faces),
        matched=sum(a.status is Status.MATCHED for a in decision.assign),
        pending=sum(a.status is Status.PENDING for a in decision.assign),
        displaced=len(decision.unassign),
        batches=1,
    )
