"""The pgvector-backed :class:`facescan_people.incremental.Index`: one library's faces of
one model, in one transaction of facescan_people.clustering.

``Incremental`` is synchronous and the database client is asyncio: the clustering of a
batch runs in a worker thread (``asyncio.to_thread``) and each index call runs its query
on the event loop and waits for it. Every write goes through the transaction, so a batch
is committed whole or not at all.

Neighbours come from an index-ordered query (``<->`` for dlib, ``<=>`` for ArcFace) with
the library's filter, the transaction's HNSW iterative scan filling its LIMIT past the
rows other libraries hold. Labels are people: a face's label is the person it is a
reference face of (status matched); pending and nobody's faces have none.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from facescan_people.cluster import Vector
from facescan_people.incremental import Neighbour
from facescan_people.models import Kind
from facescan_people.repository import Tx

T = TypeVar("T")

ASSIGNED_WINDOW = 100
"""Nearest faces scanned when only assigned ones are asked for: the nearest assigned
faces among them (bounded cost, where a filter on the scan could walk the whole index)."""


def vector_text(v: Vector) -> str:
    """pgvector's text form of an embedding."""
    return "[" + ",".join(f"{float(x):.7g}" for x in np.asarray(v).ravel()) + "]"


class PgIndex:
    """The faces of ``library`` with a ``kind`` embedding, through transaction ``tx``."""

    def __init__(self, tx: Tx, loop: asyncio.AbstractEventLoop, library: str, kind: Kind) -> None:
        self._tx = tx
        self._loop = loop
        self._library = library
        self._neighbours = f"cluster_neighbours_{kind.value}"
        self._recent: deque[list[Neighbour]] = deque(maxlen=2)
        self.created: list[int] = []
        """Unnamed people made in this transaction."""
        self.assigned: list[int] = []
        """Faces given a person in this transaction."""
        self.seen = 0
        """The last face (in id order) clustering has taken: later ones, unless someone
        has them, are not in the index yet, as if they had not arrived."""

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def neighbours(
        self, embedding: Vector, k: int, max_distance: float, *, assigned: bool = False
    ) -> Sequence[Neighbour]:
        window = ASSIGNED_WINDOW if assigned else k
        query = vector_text(embedding)
        rows = self._run(
            self._tx.fetch(self._neighbours, self._library, query, window, assigned, self.seen)
        )
        found = [
            Neighbour(r["face_id"], float(r["distance"]), r["person_id"], r["image_id"])
            for r in rows[:k]
            if r["distance"] <= max_distance
        ]
        self._recent.append(found)
        return found

    def image_labels(self, image: int) -> set[int]:
        return {r[0] for r in self._run(self._tx.fetch("image_labels", image))}

    def assign(self, face: int, label: int) -> None:
        """Gives the face to the person unless someone has it, the user took it from that
        person (`people remove`), or the person has a face of its photo: then it stays
        nobody's. Its distance: to the nearest face of the person the last queries saw."""
        assigned = self._run(
            self._tx.fetch("cluster_assign", [face], [label], [self._distance(face, label)])
        )
        self.assigned.extend(r[0] for r in assigned)

    def _distance(self, face: int, label: int) -> float:
        seen = [n for found in self._recent for n in found]
        members = [n.distance for n in seen if n.label == label and n.face != face]
        if members:
            return min(members)
        itself = [n.distance for n in seen if n.face == face]  # pulled in: to the core face
        return min(itself, default=0.0)

    def new_label(self) -> int:
        label = int(self._run(self._tx.fetchval("new_unnamed", self._library)))
        self.created.append(label)
        return label
