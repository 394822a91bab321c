"""What POST /cluster does: the faces of a library, or of some of its media, clustered
with HDBSCAN and written nowhere (a preview), or the library's faces nobody has
clustered into unnamed people (``apply``, as `facescan people cluster` does).

Called by ``facescan_api.cluster_routes``. The work is bounded: more than ``max_faces``
faces to cluster is refused (413) before any embedding is read. HDBSCAN runs in a
thread (``facescan_people.cluster.full``, one at a time per server: ``gate``), never on
the event loop. The preview reads its faces and the library's clustering parameters in
one transaction that it rolls back, so it writes nothing, not even the library's
default people settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from facescan_api.guard import Problem
from facescan_api.models import Box
from facescan_api.people_models import Cluster, ClusterFace, ClusterResult
from facescan_api.people_sql import query, translated
from facescan_api.uploads import library_embedding
from facescan_people.cluster import full
from facescan_people.clustering import cluster_incremental, full_params
from facescan_people.models import Kind, Thresholds
from facescan_people.queries import query as people_query
from facescan_people.repository import PeopleDb
from facescan_queue.repository import Queue

MAX_FACES = 10_000
"""Faces one POST /cluster may cluster (HDBSCAN's memory and time grow faster than them)."""
SHOWN = 10
"""Unknown or undetected media a refusal names."""


async def selected_images(
    queue: Queue, library: str, media_ids: Sequence[str] | None, paths: Sequence[str] | None
) -> list[int] | None:
    """The images named by media ids and paths (None: every image of the library); 404
    for one that names no image, 409 for one whose faces are not detected yet."""
    if media_ids is None and paths is None:
        return None
    await library_embedding(queue, library)  # 404 for an unknown library
    with translated(queue):
        rows = await queue.pool.fetch(
            query("selected_images"), library, list(media_ids or ()), list(paths or ())
        )
    named = {r["media_id"] for r in rows if r["media_id"] is not None}
    found = {r["path"] for r in rows if r["media_id"] is None}
    unknown = [f"media_id {m!r}" for m in dict.fromkeys(media_ids or ()) if m not in named]
    unknown += [f"path {p!r}" for p in dict.fromkeys(paths or ()) if p not in found]
    if unknown:
        raise Problem(404, "not_found", f"no image of library {library} for {_some(unknown)}")
    waiting = sorted({r["path"] for r in rows if r["state"] != "done"})
    if waiting:
        raise Problem(
            409,
            "not_detected",
            f"the faces of {_some(waiting)} are not detected yet (queued, or failed: GET "
            "/process/JOB says which): retry once they are",
        )
    return sorted({r["id"] for r in rows})


def _some(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


async def preview(
    queue: Queue, library: str, images: list[int] | None, gate: asyncio.Semaphore, max_faces: int
) -> ClusterResult:
    """HDBSCAN over the faces of ``images`` (None: the whole library), each model's apart."""
    await library_embedding(queue, library)
    with translated(queue):
        async with queue.pool.acquire() as conn:
            read = conn.transaction()
            await read.start()
            try:
                count = await conn.fetchval(query("count_faces"), library, images)
                _bound(count, max_faces)
                settings = await conn.fetchrow(people_query("settings"), library)
                assert settings is not None  # the query makes the row when it is missing
                thresholds = Thresholds.from_row(dict(settings))
                rows = await conn.fetch(query("faces_to_cluster"), library, images, False)
            finally:
                await read.rollback()
    clusters: list[Cluster] = []
    noise: list[ClusterFace] = []
    for kind in Kind:
        mine = [r for r in rows if r["kind"] == kind.value]
        if not mine:
            continue
        x = np.asarray([r["embedding"] for r in mine], np.float32)
        params = full_params(kind, thresholds)
        async with gate:
            found = await asyncio.to_thread(full, x, [r["image_id"] for r in mine], {}, params)
        for c in found.clusters:
            members = [mine[i]["face_id"] for i in c.members]
            clusters.append(_cluster(members, kind, face(mine[c.representative]), None))
        noise += [face(mine[i]) for i in found.noise]
    return _result(library, False, len(rows), clusters, noise)


async def apply(queue: Queue, library: str, max_faces: int) -> ClusterResult:
    """`facescan people cluster` on the library: its faces nobody has become unnamed
    people (or join people near them); answers who has each of those faces now."""
    await library_embedding(queue, library)
    with translated(queue):
        count = await queue.pool.fetchval(query("count_unassigned"), library)
        _bound(count, max_faces)
        candidates = await queue.pool.fetch(query("faces_to_cluster"), library, None, True)
    await cluster_incremental(PeopleDb(queue), library)
    ids = [r["face_id"] for r in candidates]
    with translated(queue):
        rows = await queue.pool.fetch(query("faces_people"), ids)
    kinds = {r["face_id"]: Kind(r["kind"]) for r in candidates}
    by_person: dict[int, list[Any]] = {}
    noise = []
    for r in rows:
        if r["person_id"] is None:
            noise.append(face(r))
        else:
            by_person.setdefault(r["person_id"], []).append(r)
    clusters = []
    for person, members in by_person.items():
        shown = next((m for m in members if m["face_id"] == m["featured_face"]), members[0])
        ids = [m["face_id"] for m in members]
        clusters.append(_cluster(ids, kinds[ids[0]], face(shown), person))
    return _result(library, True, len(candidates), clusters, noise)


def _bound(count: int, max_faces: int) -> None:
    if count > max_faces:
        raise Problem(
            413,
            "too_many_faces",
            f"{count} faces to cluster, more than {max_faces}: name fewer media or paths, "
            "or run `facescan people cluster` on the library",
        )


def face(row: Any) -> ClusterFace:
    return ClusterFace(
        face_id=row["face_id"],
        path=row["path"],
        media_id=row["media_id"],
        box=Box(
            top=row["box_top"],
            right=row["box_right"],
            bottom=row["box_bottom"],
            left=row["box_left"],
        ),
    )


def _cluster(members: list[int], kind: Kind, shown: ClusterFace, person: int | None) -> Cluster:
    members = sorted(members)
    return Cluster(
        faces=members, count=len(members), model=kind.value, representative=shown, person_id=person
    )


def _result(
    library: str, applied: bool, faces: int, clusters: list[Cluster], noise: list[ClusterFace]
) -> ClusterResult:
    clusters.sort(key=lambda c: (-c.count, c.faces[0]))
    noise.sort(key=lambda f: f.face_id)
    return ClusterResult(
        library=library, applied=applied, faces=faces, clusters=clusters, noise=noise
    )
