"""The route POST /cluster (an APIRouter): the faces of a library, or of some of its media,
in clusters with counts, a representative face and the noise.

Included by ``create_app`` (``facescan_api.app``) with the server's queue: served when
the server has a database; otherwise it answers 404 saying so, and the OpenAPI document
leaves it out. It needs an API key (``guard``); what it does is ``facescan_api.cluster_service``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter
from fastapi.params import Depends

from facescan_api.cluster_service import MAX_FACES, apply, preview, selected_images
from facescan_api.guard import Problem
from facescan_api.people_errors import TypedRoute, documented, off_router
from facescan_api.people_models import ClusterRequest, ClusterResult
from facescan_queue.repository import Queue


def cluster_router(
    queue: Queue | None, authorized: Sequence[Depends], *, max_faces: int = MAX_FACES
) -> APIRouter:
    """POST /cluster over the database of ``queue`` (None: off); at most ``max_faces``
    faces per request; ``authorized`` documents the API key."""
    if queue is None:
        return off_router("/cluster", "/cluster")
    gate = asyncio.Semaphore(1)
    router = APIRouter(dependencies=authorized, route_class=TypedRoute, tags=["people"])

    @router.post(
        "/cluster",
        response_model=ClusterResult,
        responses=documented(
            {
                400: "Not a JSON body of the documented shape (invalid_request).",
                404: "No such library, or a media_id or path that names none of its "
                "images (not_found).",
                409: "A named image whose faces are not detected yet (not_detected).",
                413: f"More faces to cluster than the server's bound ({max_faces}; "
                "too_many_faces).",
                422: "apply with media_ids or paths: apply clusters a whole library "
                "(invalid_request).",
            }
        ),
        summary="Cluster the faces of a library or of some of its media",
    )
    async def cluster(request: ClusterRequest) -> ClusterResult:
        """Without apply: HDBSCAN over the faces' embeddings (each model's apart, with the
        library's min_cluster_size and min_samples), nothing written; the faces of media
        named by media_ids (of /process jobs) or paths, or of the whole library. With
        apply: the library's faces nobody has become unnamed people, or join the people
        near them (`facescan people cluster`); each cluster is then a person's new faces."""
        subset = request.media_ids is not None or request.paths is not None
        if request.apply:
            if subset:
                raise Problem(
                    422,
                    "invalid_request",
                    "apply clusters a whole library: leave out media_ids and paths",
                )
            return await apply(queue, request.library, max_faces)
        images = await selected_images(queue, request.library, request.media_ids, request.paths)
        return await preview(queue, request.library, images, gate, max_faces)

    return router
