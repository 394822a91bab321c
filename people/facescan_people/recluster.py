"""`people cluster --full`: re-cluster every face of a library, in one transaction.

Called by the `facescan people cluster --full` command. Per model (never mixing them), it
reads the library's embeddings and who has each face, runs
:func:`facescan_people.cluster.full` with every face of a named person (matched) and every
face the user or an import gave someone as a constraint, and writes the result in one
transaction holding the library's matching lock:

- named people and the faces the user gave anyone are kept exactly (a named person's
  pending faces are left out of the clustering and stay pending); a face the clustering
  puts with a named person becomes theirs (automatic, matched);
- the automatic assignments to unnamed people are replaced: a new cluster takes over the
  unnamed person most of its faces had (their id stays), or gets a new one; unnamed people
  no cluster took over are deleted;
- clusters smaller than ``min_faces`` and noise are left unassigned; a face the user took
  from a person (`people remove`) never goes back to them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt

from facescan_people.cluster import Clustering, full
from facescan_people.clustering import ClusterReport, finish, full_params
from facescan_people.models import Kind, Source, Thresholds
from facescan_people.repository import PeopleDb, Tx


async def cluster_full(db: PeopleDb, library: str) -> ClusterReport:
    """Re-clusters the library's faces; see the module docstring for what is kept."""
    report = ClusterReport(mode="full")
    async with db.transaction(library) as tx:
        thresholds = await tx.thresholds(library)
        rejected = {(r[0], r[1]) for r in await tx.fetch("library_rejections", library)}
        for kind in Kind:
            rows = await tx.fetch("library_embeddings", library, kind.value)
            if rows:
                report.add(await _full(tx, library, kind, rows, thresholds, rejected))
        report.removed += len(await tx.fetch("drop_empty_unnamed", library))
    await finish(db, library, report)
    return report


def _fixed(row: Any) -> bool:
    """A face the re-cluster keeps with its person: a named person's, or the user's."""
    return row["person_id"] is not None and (row["named"] or row["source"] != Source.AUTOMATIC)


async def _full(
    tx: Tx,
    library: str,
    kind: Kind,
    rows: list[Any],
    thresholds: Thresholds,
    rejected: set[tuple[int, int]],
) -> ClusterReport:
    # input: the fixed matched faces (constraints) and the free ones
    used = [r for r in rows if not _fixed(r) or r["status"] == "matched"]
    x = np.asarray([r["embedding"] for r in used], np.float32)
    images = [r["image_id"] for r in used]
    confirmed = {i: r["person_id"] for i, r in enumerate(used) if _fixed(r)}
    params = full_params(kind, thresholds)
    result = await asyncio.to_thread(full, x, images, confirmed, params)
    free = [i for i in range(len(used)) if i not in confirmed]
    old = {i: used[i]["person_id"] for i in free}  # automatic: an unnamed person, or None
    target, representative = await _targets(tx, library, used, result, old, thresholds)
    await _carry_rejections(tx, used, old, target, representative, rejected)
    metric = params.metric
    moved = [i for i in free if old[i] is not None and target.get(i) != old[i]]
    await tx.unassign([used[i]["id"] for i in moved])
    give = [
        i
        for i in free
        if target.get(i) is not None
        and target[i] != old[i]
        and (used[i]["id"], target[i]) not in rejected
    ]
    distances = [_distance(x, i, representative[target[i]], metric) for i in give]
    await tx.fetch(
        "cluster_assign", [used[i]["id"] for i in give], [target[i] for i in give], distances
    )
    unnamed = [p for p in representative if p not in set(confirmed.values())]
    await tx.fetch("set_featured", unnamed, [used[representative[p]]["id"] for p in unnamed])
    # rejections may have left a cluster under min_faces: it is dissolved
    dissolved = {r[0] for r in await tx.fetch("dissolve_small", unnamed, thresholds.min_faces)}
    kept = {p for p in unnamed if p in set(old.values())} - dissolved
    clustered = [used[i]["id"] for i in free if target.get(i) is not None]
    return ClusterReport(
        mode="full",
        considered=len(free),
        assigned=int(await tx.fetchval("count_held", clustered)),
        created=len(set(unnamed) - dissolved) - len(kept),
        kept=len(kept),
    )


async def _targets(
    tx: Tx,
    library: str,
    used: list[Any],
    result: Clustering,
    old: dict[int, int | None],
    thresholds: Thresholds,
) -> tuple[dict[int, int], dict[int, int]]:
    """Each clustered face's person, and each person's representative face (index).

    A named cluster goes to its person; an unnamed one of at least ``min_faces`` faces to
    the unnamed person most of its faces had (largest clusters first), else a new one."""
    target: dict[int, int] = {}
    representative: dict[int, int] = {}
    fresh = sorted(
        (c for c in result.clusters if c.person is None and len(c.members) >= thresholds.min_faces),
        key=lambda c: (-len(c.members), c.members[0]),
    )
    taken = {c.person for c in result.clusters if c.person is not None}
    for cluster in fresh:
        votes = Counter(p for m in cluster.members if (p := old.get(m)) is not None)
        reuse = [p for p, _ in votes.most_common() if p not in taken]
        person = reuse[0] if reuse else int(await tx.fetchval("new_unnamed", library))
        taken.add(person)
        representative[person] = cluster.representative
        target.update(dict.fromkeys(cluster.members, person))
    for cluster in result.clusters:
        if cluster.person is not None:
            representative.setdefault(cluster.person, cluster.representative)
            target.update(dict.fromkeys(cluster.members, cluster.person))
    return target, representative


async def _carry_rejections(
    tx: Tx,
    used: list[Any],
    old: dict[int, int | None],
    target: dict[int, int],
    representative: dict[int, int],
    rejected: set[tuple[int, int]],
) -> None:
    """An unnamed person no cluster took over hands the faces the user took from them
    to the person most of their faces go to (the user's `people remove` stays true)."""
    gone = {p for p in old.values() if p is not None and p not in representative}
    heirs: dict[int, Counter[int]] = {}
    for i, p in old.items():
        if p in gone and i in target:
            heirs.setdefault(p, Counter())[target[i]] += 1
    pairs = [(face, heirs[p].most_common(1)[0][0]) for face, p in sorted(rejected) if p in heirs]
    rejected.update(pairs)
    await tx.fetch("reject", [f for f, _ in pairs], [p for _, p in pairs])


def _distance(x: npt.NDArray[np.float32], face: int, to: int, metric: str) -> float:
    """The distance of two faces in the model's unit (L2, or 1 - cos)."""
    a, b = x[face].astype(np.float64), x[to].astype(np.float64)
    if metric == "cosine":
        cos = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
        return max(0.0, 1.0 - cos)
    return float(np.linalg.norm(a - b))
