"""Clustering unknown faces one new face at a time (Immich-style), through an index.

Each face costs a bounded number of :class:`Index` queries: a face with at least
``min_faces`` neighbours within ``max_distance`` is a core face; it joins the cluster its
nearest clustered neighbours vote for (never one that holds a face of its photo), or
starts one; other faces are deferred and tried once more at the end, then left as
noise. :class:`MemoryIndex` is the exact in-memory index (tests, the benchmark); the
database's is pgvector's HNSW. The per-model defaults of both paths are here too.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from facescan_people.cluster import FullParams, Metric, Vector


class Neighbour(NamedTuple):
    """One face found near a query embedding."""

    face: int
    distance: float
    label: int | None
    """The face's cluster (person), ``None`` while unassigned."""
    image: int


class Index(Protocol):
    """What the incremental path needs from where the faces live (pgvector, or memory).

    ``neighbours`` is the only vector query: the ``k`` faces nearest ``embedding`` within
    ``max_distance``, nearest first (pgvector: ``ORDER BY embedding <-> $1 LIMIT $k`` with
    the distance filter); the face being assigned may be among them and is skipped.
    ``image_labels`` is a plain look-up: the labels held by the faces of one image.
    ``assign`` records a face's label; ``new_label`` creates a new (unnamed) person.
    """

    def neighbours(
        self, embedding: Vector, k: int, max_distance: float, *, assigned: bool = False
    ) -> Sequence[Neighbour]:
        """The faces nearest ``embedding``, nearest first; only assigned ones if asked."""
        ...

    def image_labels(self, image: int) -> Collection[int]:
        """Labels already held by faces of ``image``."""
        ...

    def assign(self, face: int, label: int) -> None:
        """Record ``face`` as a member of ``label``."""
        ...

    def new_label(self) -> int:
        """A label no face holds yet."""
        ...


@dataclass(frozen=True)
class IncrementalParams:
    """Immich-style: a core face has ``min_faces`` others within ``max_distance``."""

    max_distance: float = 0.5
    """In the index's unit (L2 for dlib, 1 - cos for ArcFace)."""
    min_faces: int = 3
    k: int = 10
    share: float = 0.5
    """A core face whose neighbours are more than this share unassigned starts a new
    cluster (and pulls them in) instead of joining the cluster a few of them vote for."""
    """Neighbours asked for per query (at least ``min_faces``): the core count and the
    clustered neighbour to join both come from this one query."""


@dataclass
class Incremental:
    """Assigns new faces one at a time; each costs at most four ``neighbours`` queries.

    An attempt asks for the ``k`` nearest faces within ``max_distance`` (and, when none
    of them is assigned, once more for the nearest assigned ones). The face is core with
    ``min_faces`` of them. Its assigned neighbours vote for their clusters (nearer ones
    weigh more), leaving out clusters that already hold a face of its photo; if those were
    all it had, it stays unassigned. A core face joins the winner, unless more than
    ``share`` of its neighbours are unassigned: then it starts a new cluster and pulls
    those neighbours in (one per photo), so that a look-alike's first faces do not join
    the sibling's cluster. ``add`` makes the first attempt and defers a face that is not
    core; ``finish`` retries each deferred face once (not core: it joins the winner if
    any), the rest is noise. Faces pulled in meanwhile keep their cluster.
    """

    index: Index
    params: IncrementalParams = IncrementalParams()
    queries: int = 0
    """``neighbours`` calls so far."""
    faces: int = 0
    """Faces added so far."""
    _deferred: list[tuple[int, Vector, int]] = field(default_factory=list, init=False)
    _pulled: dict[int, int] = field(default_factory=dict, init=False)
    _per_face: dict[int, int] = field(default_factory=dict, init=False)

    def _query(self, face: int, embedding: Vector, k: int, assigned: bool) -> Sequence[Neighbour]:
        self.queries += 1
        self._per_face[face] = self._per_face.get(face, 0) + 1
        return self.index.neighbours(embedding, k, self.params.max_distance, assigned=assigned)

    def _attempt(self, face: int, embedding: Vector, image: int, last: bool) -> int | None:
        p = self.params
        found = self._query(face, embedding, max(p.k, p.min_faces) + 1, assigned=False)
        near = [n for n in found if n.face != face and n.distance <= p.max_distance]
        core = len(near) >= p.min_faces
        if not core and not last:
            return None
        taken = set(self.index.image_labels(image))
        clustered = [n for n in near if n.label is not None]
        if not clustered:  # the faces nearest may all be unassigned: ask for assigned ones
            found = self._query(face, embedding, p.k + 1, assigned=True)
            clustered = [n for n in found if n.face != face and n.distance <= p.max_distance]
        votes: dict[int, float] = {}
        for n in clustered:
            if n.label is not None and n.label not in taken and n.image != image:
                votes[n.label] = votes.get(n.label, 0.0) + p.max_distance - n.distance / 2
        if clustered and not votes:
            return None  # its people already hold a face of its photo: not a new person
        best = max(votes, key=lambda key: votes[key]) if votes else None
        # a core face among mostly unassigned faces starts their own cluster rather than
        # join a neighbouring one (a look-alike's) on the strength of a few faces
        loose = sum(1 for n in near if n.label is None)
        if best is not None and not (core and loose > p.share * len(near)):
            self.index.assign(face, best)
            return best
        if not core:
            return None
        label = self.index.new_label()
        self.index.assign(face, label)
        images = {image}
        for n in near:  # its unassigned neighbours join it (DBSCAN's border points)
            if n.label is None and n.image not in images:
                images.add(n.image)
                self.index.assign(n.face, label)
                self._pulled[n.face] = label
        return label

    def add(self, face: int, embedding: Vector, image: int) -> int | None:
        """The face's label, or ``None`` while it is deferred."""
        self.faces += 1
        label = self._attempt(face, embedding, image, last=False)
        if label is None:
            self._deferred.append((face, embedding, image))
        return label

    def finish(self) -> dict[int, int | None]:
        """Retries the deferred faces once; their labels (``None``: noise)."""
        deferred, self._deferred = self._deferred, []
        return {
            f: self._pulled[f] if f in self._pulled else self._attempt(f, e, i, last=True)
            for f, e, i in deferred
        }

    @property
    def queries_per_face(self) -> float:
        """Mean ``neighbours`` queries per face added."""
        return self.queries / self.faces if self.faces else 0.0

    @property
    def max_queries_per_face(self) -> int:
        """The most ``neighbours`` queries one face cost (at most 4)."""
        return max(self._per_face.values(), default=0)


class MemoryIndex:
    """An exact in-memory ``Index`` (numpy brute force), for tests and the bench."""

    def __init__(self, dim: int, metric: Metric = "euclidean", capacity: int = 1024) -> None:
        self.metric: Metric = metric
        self._x = np.zeros((capacity, dim), np.float32)
        self._sq = np.zeros(capacity, np.float32)
        self._assigned = np.zeros(capacity, np.bool_)
        self.images: list[int] = []
        self.labels: list[int | None] = []
        self._image_faces: dict[int, list[int]] = {}
        self._next_label = 0

    def insert(self, embedding: Vector, image: int) -> int:
        """Stores a face (unassigned); its id."""
        face = len(self.images)
        if face == len(self._x):
            self._x = np.concatenate([self._x, np.zeros_like(self._x)])
            self._sq = np.concatenate([self._sq, np.zeros_like(self._sq)])
            self._assigned = np.concatenate([self._assigned, np.zeros_like(self._assigned)])
        v = np.asarray(embedding, np.float32)
        if self.metric == "cosine":
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        self._x[face] = v
        self._sq[face] = float(v @ v)
        self.images.append(image)
        self.labels.append(None)
        self._image_faces.setdefault(image, []).append(face)
        return face

    def neighbours(
        self, embedding: Vector, k: int, max_distance: float, *, assigned: bool = False
    ) -> list[Neighbour]:
        n = len(self.images)
        q = np.asarray(embedding, np.float32)
        if self.metric == "cosine":
            q = q / max(float(np.linalg.norm(q)), 1e-12)
            dist = 1.0 - self._x[:n] @ q
        else:
            dist = np.sqrt(np.maximum(self._sq[:n] - 2.0 * (self._x[:n] @ q) + q @ q, 0.0))
        if assigned:
            dist = np.where(self._assigned[:n], dist, np.inf)
        top = np.argpartition(dist, k - 1)[:k] if n > k else np.arange(n)
        top = top[np.argsort(dist[top], kind="stable")]
        return [
            Neighbour(int(f), float(dist[f]), self.labels[f], self.images[f])
            for f in top
            if dist[f] <= max_distance
        ]

    def image_labels(self, image: int) -> set[int]:
        return {
            label for f in self._image_faces.get(image, ()) if (label := self.labels[f]) is not None
        }

    def assign(self, face: int, label: int) -> None:
        self.labels[face] = label
        self._assigned[face] = True

    def new_label(self) -> int:
        self._next_label += 1
        return self._next_label - 1


@dataclass(frozen=True)
class ModelDefaults:
    """The parameters chosen for one recognition model (see bench/people_bench.py)."""

    full: FullParams
    incremental: IncrementalParams


DEFAULTS = {
    # dlib: same person ~0.40 apart (95 % < 0.56), others ~0.8, siblings ~0.6 (L2)
    "dlib": ModelDefaults(
        FullParams("euclidean", max_link=0.55), IncrementalParams(max_distance=0.45)
    ),
    # ArcFace: same person 1 - cos ~0.35 (95 % < 0.56), others ~0.9, siblings ~0.6
    "arcface": ModelDefaults(
        FullParams("cosine", max_link=0.5), IncrementalParams(max_distance=0.42)
    ),
}
