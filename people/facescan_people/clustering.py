"""`people cluster`: the faces nobody has become unnamed people, one face at a time
(incremental, the default) through the pgvector index.

Called by the `facescan people cluster` command; `--full` is facescan_people.recluster's.
Each model's faces are clustered apart (dlib's and ArcFace's are never compared), in face
id order, a batch per transaction holding the library's matching lock (as `people sync`
does): the batch's faces go through :class:`facescan_people.incremental.Incremental` over
a :class:`facescan_people.pg_index.PgIndex`, the new clusters left with fewer than the
library's ``min_faces`` are dissolved (their faces nobody's again), featured faces are
chosen, and the batch commits whole. A run killed at any moment leaves every batch
either committed or untouched; the next run goes on with the faces still nobody's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from facescan_people.cluster import FullParams
from facescan_people.incremental import DEFAULTS, Incremental, IncrementalParams
from facescan_people.models import Kind, Thresholds
from facescan_people.pg_index import PgIndex
from facescan_people.repository import PeopleDb, Tx

BATCH_SIZE = 500
"""Faces clustered and committed per transaction."""


@dataclass
class ClusterReport:
    """What a `people cluster` run did, summed over models and batches."""

    mode: str = "incremental"
    considered: int = 0
    """Faces nobody had that the run clustered."""
    assigned: int = 0
    """Faces given a person (unnamed, or named where their cluster was)."""
    created: int = 0
    """Unnamed people made."""
    kept: int = 0
    """`--full`: unnamed people kept (their cluster found again)."""
    removed: int = 0
    """Unnamed people deleted: dissolved, emptied, or not found again by `--full`."""
    batches: int = 0
    unnamed: int = 0
    """Unnamed people of the library after the run."""
    unassigned: list[dict[str, Any]] = field(default_factory=list)
    """The faces nobody has after the run: face id and image path."""

    def add(self, other: ClusterReport) -> None:
        for name in ("considered", "assigned", "created", "kept", "removed", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, library: str) -> str:
        return (
            f"{library} ({self.mode}): {self.considered} faces clustered, {self.assigned} "
            f"assigned; unnamed people: {self.created} new, {self.kept} kept, {self.removed} "
            f"removed, {self.unnamed} in all; {len(self.unassigned)} faces unassigned"
        )


def incremental_params(kind: Kind, thresholds: Thresholds) -> IncrementalParams:
    """The model's incremental defaults; a core face needs the library's ``min_faces``."""
    return replace(DEFAULTS[kind.value].incremental, min_faces=thresholds.min_faces)


def full_params(kind: Kind, thresholds: Thresholds) -> FullParams:
    """The model's full defaults with the library's HDBSCAN parameters."""
    return replace(
        DEFAULTS[kind.value].full,
        min_cluster_size=thresholds.min_cluster_size,
        min_samples=thresholds.min_samples,
    )


async def cluster_incremental(
    db: PeopleDb,
    library: str,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[ClusterReport], Awaitable[None]] | None = None,
) -> ClusterReport:
    """Clusters the library's faces nobody has, a batch per transaction."""
    report = ClusterReport()
    for kind in Kind:
        after = 0
        while True:
            async with db.transaction(library) as tx:
                rows = await tx.fetch("cluster_faces", library, kind.value, after, batch_size)
                if not rows:
                    break
                batch = await _batch(tx, library, kind, rows)
            report.add(batch)
            after = rows[-1]["id"]
            if on_batch is not None:
                await on_batch(batch)
    await finish(db, library, report)
    return report


async def _batch(tx: Tx, library: str, kind: Kind, rows: list[Any]) -> ClusterReport:
    thresholds = await tx.thresholds(library)
    index = PgIndex(tx, asyncio.get_running_loop(), library, kind)
    engine = Incremental(index, incremental_params(kind, thresholds))

    def work() -> None:
        for r in rows:
            index.seen = r["id"]
            engine.add(r["id"], np.asarray(r["embedding"], np.float32), r["image_id"])
        engine.finish()

    await asyncio.to_thread(work)
    dissolved = await tx.fetch("dissolve_small", index.created, thresholds.min_faces)
    await tx.fetch("refeature", library)
    return ClusterReport(
        considered=len(rows),
        assigned=int(await tx.fetchval("count_held", index.assigned)),
        created=len(index.created) - len(dissolved),
        batches=1,
    )


async def finish(db: PeopleDb, library: str, report: ClusterReport) -> None:
    """Drops the unnamed people left without faces; lists what is left unassigned."""
    async with db.transaction(library) as tx:
        report.removed += len(await tx.fetch("drop_empty_unnamed", library))
        await tx.fetch("refeature", library)
        report.unnamed = int(await tx.fetchval("unnamed_count", library))
        report.unassigned = [
            {"face_id": r["face_id"], "path": r["path"]}
            for r in await tx.fetch("unassigned_faces", library)
        ]
