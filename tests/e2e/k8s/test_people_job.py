"""A FaceScan with spec.people on the real control plane: the operator's people Job (a
`facescan people sync` pod the node agent runs) matches the faces detected after a
person was named, and the FaceScan's status counts the people and their faces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from facescan_queue.repository import Queue

from .cluster import Kube
from .operator_support import (
    Operator,
    apply,
    created_jobs,
    events,
    facescan,
    phase,
    poll,
    register,
    status,
)

FACESCAN = str(Path(sys.executable).with_name("facescan"))


def people(dsn: str, *args: str) -> str:
    """`facescan people ARGS` against the test database, as a user runs it."""
    done = subprocess.run(
        [FACESCAN, "people", *args],
        env={**os.environ, "FACESCAN_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def synced(cluster: Kube, faces: int) -> bool:
    """Detection settled and a people Job has matched that many faces."""
    got = status(cluster, "photos")
    return (
        phase(cluster, "photos") == "Completed"
        and (got.get("people") or {}).get("syncedFaces") == faces
    )


async def test_a_people_job_matches_the_faces_found_after_a_person_was_named(
    cluster: Kube, operator: Operator, queue: Queue, photos: Path, dsn: str, library: str
) -> None:
    await register(queue, library, photos, ["obama.jpg"])
    await operator.start()
    await apply(cluster, facescan("photos", people={"enabled": True}))

    # the first sync: one face, nobody known yet
    await poll(lambda: synced(cluster, 1), 180, "the first people sync")
    first = status(cluster, "photos")["people"]
    assert (first["people"], first["assigned"], first["unassigned"]) == (0, 0, 1)

    people(dsn, "add", "Barack Obama", "obama.jpg", "--library", library)
    await register(queue, library, photos, ["obama2.jpg", "biden.jpg"])

    # detected, then matched by a new people Job: obama2 tagged, biden nobody's
    await poll(lambda: synced(cluster, 3), 240, "the new faces matched by a people Job")
    got = status(cluster, "photos")["people"]
    assert (got["people"], got["assigned"], got["unassigned"]) == (1, 2, 1)
    shown = people(dsn, "show", "Barack Obama", "--library", library)
    assert "obama2.jpg" in shown
    assert "biden.jpg" not in shown
    made = [
        j
        for j in created_jobs(cluster)
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "people"
    ]
    assert len(made) == 2  # one per batch of new faces, no twin, none while nothing is new
    assert made[0]["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["people", "sync"]
    assert len(events(cluster, "PeopleSynced")) == 2
