"""Clustering unknown faces into people: the full re-cluster (HDBSCAN).

The incremental path (one new face at a time, through an index) is incremental.py's,
the quality measures quality.py's.

Pure functions of embeddings, image ids and user-confirmed assignments: no I/O, no
database. Callers: the people service (full re-cluster of a library; incremental
assignment of new faces through a pgvector-backed ``Index``), ``bench/people_bench.py``
and ``tests/unit/people``.

Two hard rules hold in both paths: a user-confirmed assignment (face -> person) is kept
exactly, and no cluster holds two faces of one image unless the user put them there.

Distances: ``"euclidean"`` for dlib (its vectors are not unit-norm), ``"cosine"`` for
ArcFace. The full path normalises cosine embeddings and clusters them with the Euclidean
distance, which is monotone in the cosine (``|a - b|^2 = 2 - 2 cos``); the incremental
path's ``max_distance`` is in the index's own unit: L2 for euclidean, ``1 - cos`` for
cosine (pgvector's ``<->`` and ``<=>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["euclidean", "cosine"]
Vector = npt.NDArray[np.floating]
Matrix = npt.NDArray[np.floating]
NOISE = -1
SELF_DISTANCE = 1e-9


@dataclass(frozen=True)
class FullParams:
    """Parameters of the full re-cluster (HDBSCAN, then the constraints)."""

    metric: Metric = "euclidean"
    min_cluster_size: int = 3
    """HDBSCAN's smallest cluster; an unnamed cluster left smaller after the same-photo
    split becomes noise."""
    min_samples: int = 2
    """HDBSCAN's density estimate: neighbours counted for a face's core distance."""
    cluster_selection_epsilon: float = 0.0
    """Clusters closer than this (in normalised units for cosine) are not split further."""
    cluster_selection_method: Literal["eom", "leaf"] = "eom"
    allow_single_cluster: bool = False
    """False: a library of one person is all noise. True fixes that but, on the synthetic
    sets, lets HDBSCAN keep a few merged clusters (pairwise precision 0.989 instead of
    0.997 for ArcFace on 2,000 faces)."""
    exact_up_to: int = 4000
    """Up to this many faces, HDBSCAN runs on all pairwise distances (memory: n^2 doubles);
    above, on the exact ``graph_neighbours``-nearest-neighbour graph (memory: n * k): the
    same hierarchy wherever its links are among each face's nearest neighbours, which on
    the synthetic sets gave the same clusters (agreement 1.0 at k = 64, 0.998 at 32)."""
    graph_neighbours: int = 64
    max_link: float | None = None
    """An unconfirmed face farther than this from every other face of its cluster is noise
    (HDBSCAN lets a loner join a cluster born further out than the loner's distance). In
    the model's unit: L2 for euclidean, 1 - cos for cosine."""


@dataclass(frozen=True)
class Cluster:
    """One person: a named one (``person`` set by the user's confirmations) or a new one."""

    members: tuple[int, ...]
    representative: int
    """The member nearest the members' mean: the face to show for the cluster."""
    person: int | None
    """The confirmed person it carries; ``None`` for a cluster nobody named yet."""


@dataclass(frozen=True)
class Clustering:
    """Every face's cluster (an index into ``clusters``) or ``None`` for noise."""

    labels: tuple[int | None, ...]
    clusters: tuple[Cluster, ...]
    noise: tuple[int, ...]
    """Faces in no cluster, listed (shown to the user as "unassigned")."""

    def person_labels(self) -> list[int | None]:
        """Per face: the cluster's person where it has one, else None."""
        return [None if c is None else self.clusters[c].person for c in self.labels]


def _prepare(embeddings: Matrix, metric: Metric) -> npt.NDArray[np.float64]:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-d, got shape {x.shape}")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def knn_graph(x: npt.NDArray[np.float64], k: int) -> Any:
    """The symmetric k-nearest-neighbour graph (CSR) of Euclidean distances, self included.

    Exact (scikit-learn's brute-force neighbour search, in chunks). Each face's own entry
    holds a tiny positive distance, so that a sparse row counts the face itself as
    HDBSCAN's dense rows do; components the graph leaves apart are chained together by
    edges far longer than any in it (they merge only at the root).
    """
    from scipy import sparse
    from scipy.sparse import csgraph
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    search = NearestNeighbors(n_neighbors=min(k, n - 1) + 1, algorithm="brute").fit(x)
    dist, cols = search.kneighbors(x)
    rows = np.repeat(np.arange(n), cols.shape[1])
    data = np.maximum(dist.ravel(), SELF_DISTANCE)
    graph = sparse.csr_matrix((data, (rows, cols.ravel())), shape=(n, n))
    graph = graph.maximum(graph.T).tocsr()
    count, component = csgraph.connected_components(graph, directed=False)
    if count > 1:
        far = 2.0 * float(graph.data.max()) + 1.0
        heads = np.unique(component, return_index=True)[1]
        chain = sparse.csr_matrix((np.full(count - 1, far), (heads[:-1], heads[1:])), shape=(n, n))
        graph = graph.maximum(chain).maximum(chain.T).tocsr()
    return graph.maximum(sparse.identity(n, format="csr") * SELF_DISTANCE).tocsr()


def _hdbscan(x: npt.NDArray[np.float64], params: FullParams) -> npt.NDArray[np.int64]:
    if len(x) < max(params.min_cluster_size, 2):
        return np.full(len(x), NOISE, np.int64)
    from sklearn.cluster import HDBSCAN  # heavy: only here

    exact = len(x) <= params.exact_up_to
    model = HDBSCAN(
        min_cluster_size=params.min_cluster_size,
        min_samples=params.min_samples,
        cluster_selection_epsilon=params.cluster_selection_epsilon,
        cluster_selection_method=params.cluster_selection_method,
        allow_single_cluster=params.allow_single_cluster,
        metric="euclidean" if exact else "precomputed",
        algorithm="brute",
        copy=True,
    )
    data = x if exact else knn_graph(x, params.graph_neighbours)
    return np.asarray(model.fit_predict(data), dtype=np.int64)


def _nearest_to_mean(x: npt.NDArray[np.float64], members: Sequence[int]) -> int:
    rows = x[list(members)]
    return int(members[int(np.argmin(np.linalg.norm(rows - rows.mean(0), axis=1)))])


def _distances(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """All Euclidean distances between the rows of ``a`` and of ``b``."""
    d2 = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.asarray(np.sqrt(np.maximum(d2, 0.0)), dtype=np.float64)


def _closeness(x: npt.NDArray[np.float64], faces: list[int], anchors: list[int]) -> Vector:
    """Per face: the mean distance to its (up to) 3 nearest anchors."""
    d = _distances(x[faces], x[anchors])
    near = np.sort(d, axis=1)[:, :3]
    return np.asarray(near.mean(1))


def _conflicts(images: npt.NDArray[np.int64], labels: npt.NDArray[np.int64]) -> int:
    """Pairs of faces of one image with one (non-noise) label."""
    keep = labels != NOISE
    _, counts = np.unique(np.stack([images[keep], labels[keep]]), axis=1, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _split_photo_conflicts(
    x: npt.NDArray[np.float64],
    images: npt.NDArray[np.int64],
    raw: npt.NDArray[np.int64],
    params: FullParams,
) -> npt.NDArray[np.int64]:
    """Splits a cluster that puts two faces of one photo together at least twice.

    Two people photographed together more than once and merged (siblings, look-alikes)
    show as repeated same-photo pairs. Such a cluster is clustered again on its own
    (HDBSCAN then has to split it); the split is kept when it at least halves the pairs,
    its noise going to the nearest part.
    """
    out = raw.copy()
    next_label = int(raw.max(initial=NOISE)) + 1
    for c in np.unique(raw[raw != NOISE]):
        members = np.flatnonzero(raw == c)
        before = _conflicts(images[members], np.zeros(len(members), np.int64))
        if before < 2 or len(members) < 2 * params.min_cluster_size:
            continue
        sub = _hdbscan(
            x[members],
            replace(params, exact_up_to=len(members), allow_single_cluster=False),
        )
        parts = np.unique(sub[sub != NOISE])
        if len(parts) < 2:
            continue
        loose = np.flatnonzero(sub == NOISE)
        if len(loose):
            placed = np.flatnonzero(sub != NOISE)
            d = _distances(x[members[loose]], x[members[placed]])
            sub[loose] = sub[placed[d.argmin(1)]]
        if 2 * _conflicts(images[members], sub) > before:
            continue
        for part in parts:
            out[members[sub == part]] = next_label
            next_label += 1
    return out


def _drop_loose(
    x: npt.NDArray[np.float64],
    raw: npt.NDArray[np.int64],
    confirmed: Mapping[int, int],
    params: FullParams,
) -> npt.NDArray[np.int64]:
    """Unconfirmed members farther than ``max_link`` from every other member become noise."""
    if params.max_link is None:
        return raw
    limit = params.max_link if params.metric == "euclidean" else np.sqrt(2 * params.max_link)
    out = raw.copy()
    for c in np.unique(raw[raw != NOISE]):
        members = np.flatnonzero(raw == c)
        for start in range(0, len(members), 1024):
            rows = members[start : start + 1024]
            d = _distances(x[rows], x[members])
            d[np.arange(len(rows)), start + np.arange(len(rows))] = np.inf
            far = rows[d.min(1) > limit]
            out[[f for f in far.tolist() if f not in confirmed]] = NOISE
    return out


def full(
    embeddings: Matrix,
    image_ids: Sequence[int] | npt.NDArray[np.integer],
    confirmed: Mapping[int, int],
    params: FullParams = FullParams(),
) -> Clustering:
    """Re-cluster every face; ``confirmed`` maps face index -> person id and is kept exactly.

    HDBSCAN finds the clusters; a cluster with two or more same-photo pairs is clustered
    again on its own (merged siblings); with ``max_link``, loners attached to a cluster
    become noise. Then: a confirmed face always goes to its person; a cluster holding
    confirmed faces of one person becomes that person (several such clusters merge into
    it); a cluster holding confirmed faces of several people is split, each unconfirmed
    face going to the person whose (up to 3) nearest confirmed faces are nearest on
    average. Last, a cluster keeping two faces of one image keeps the confirmed ones, or
    else the one nearest the cluster's mean, and sends the others to noise; an unnamed
    cluster left under ``min_cluster_size`` becomes noise.
    """
    x = _prepare(embeddings, params.metric)
    images = np.asarray(image_ids, dtype=np.int64)
    if len(images) != len(x):
        raise ValueError("one image id per embedding")
    raw = _split_photo_conflicts(x, images, _hdbscan(x, params), params)
    raw = _drop_loose(x, raw, confirmed, params)
    by_person: dict[int, list[int]] = {}
    for face, person in confirmed.items():
        by_person.setdefault(person, []).append(face)
    # groups: ("p", person id) for named, ("c", raw cluster) for new
    groups: dict[tuple[str, int], list[int]] = {}
    for face, person in confirmed.items():
        groups.setdefault(("p", person), []).append(face)
    for c in np.unique(raw[raw != NOISE]):
        members = [int(f) for f in np.flatnonzero(raw == c)]
        persons = sorted({confirmed[f] for f in members if f in confirmed})
        free = [f for f in members if f not in confirmed]
        if not persons:
            groups[("c", int(c))] = free
        elif len(persons) == 1:
            groups[("p", persons[0])].extend(free)
        elif free:
            scores = np.stack([_closeness(x, free, by_person[p]) for p in persons], axis=1)
            for face, which in zip(free, scores.argmin(1), strict=True):
                groups[("p", persons[int(which)])].append(face)
    clusters: list[Cluster] = []
    for (kind, key), members in sorted(groups.items()):
        kept = _one_face_per_image(x, images, members, confirmed)
        if kind == "c" and len(kept) < params.min_cluster_size:
            continue
        kept.sort()
        named = key if kind == "p" else None
        clusters.append(Cluster(tuple(kept), _nearest_to_mean(x, kept), named))
    labels: list[int | None] = [None] * len(x)
    for index, cluster in enumerate(clusters):
        for face in cluster.members:
            labels[face] = index
    noise = tuple(f for f, label in enumerate(labels) if label is None)
    return Clustering(tuple(labels), tuple(clusters), noise)


def _one_face_per_image(
    x: npt.NDArray[np.float64],
    images: npt.NDArray[np.int64],
    members: list[int],
    confirmed: Mapping[int, int],
) -> list[int]:
    """The members left when each image keeps its confirmed faces, or its most central one."""
    anchors = [f for f in members if f in confirmed] or members
    centre = x[anchors].mean(0)
    per_image: dict[int, list[int]] = {}
    for face in members:
        per_image.setdefault(int(images[face]), []).append(face)
    kept: list[int] = []
    for faces in per_image.values():
        sure = [f for f in faces if f in confirmed]
        if sure:
            kept.extend(sure)
        else:
            kept.append(min(faces, key=lambda f: float(np.linalg.norm(x[f] - centre))))
    return kept
