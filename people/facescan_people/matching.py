"""The matching decision, pure: which candidate faces go to which person, in which band,
under the hard rule that a person never has two faces of one photo.

Called by facescan_people.sync (new faces against every known person) and
facescan_people.enrol (a new person against the faces nobody has yet); they gather the
candidates through the HNSW indexes and write what this decides in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from facescan_people.models import (
    Assignment,
    Candidate,
    Decision,
    Holder,
    Source,
    Thresholds,
)


def nearest(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Each face's nearest candidate (ties: the person added first), in face order."""
    best: dict[int, Candidate] = {}
    for c in candidates:
        held = best.get(c.face_id)
        if held is None or (c.distance, c.person_id) < (held.distance, held.person_id):
            best[c.face_id] = c
    return [best[face] for face in sorted(best)]


def decide(
    candidates: Iterable[Candidate], holders: Iterable[Holder], thresholds: Thresholds
) -> Decision:
    """The assignments of ``candidates`` (one per face: see :func:`nearest`) within their
    model's match distance, at most one per (person, photo): the nearest wins (ties: the
    lower face id). Against a face the person already has in that photo (``holders``):
    one the user gave (or an import) always stays; an automatic one stays unless the
    candidate is nearer, and is then unassigned."""
    winners: dict[tuple[int, int], tuple[Candidate, Assignment]] = {}
    for c in candidates:
        status = thresholds.band(c.kind).status(c.distance)
        if status is None:
            continue
        key = (c.person_id, c.image_id)
        held = winners.get(key)
        if held is None or (c.distance, c.face_id) < (held[0].distance, held[0].face_id):
            winners[key] = (c, Assignment(c.face_id, c.image_id, c.person_id, status, c.distance))
    held_by = {(h.person_id, h.image_id): h for h in holders}
    assign: list[Assignment] = []
    unassign: list[int] = []
    for key, (candidate, assignment) in sorted(winners.items(), key=lambda kv: kv[1][0].face_id):
        holder = held_by.get(key)
        if holder is not None and holder.face_id != candidate.face_id:
            if holder.source is not Source.AUTOMATIC:
                continue
            if holder.distance is not None and holder.distance <= candidate.distance:
                continue
            unassign.append(holder.face_id)
        assign.append(assignment)
    return Decision(tuple(assign), tuple(unassign))
