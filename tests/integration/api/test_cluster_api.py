"""POST /cluster over real HTTP with a real database: seeded dlib-like embeddings of
three people and some strangers come back as their three clusters and the noise,
writing nothing; with apply they become unnamed people; the faces of /process jobs are
clustered by their media_id; more faces than the bound are refused before any is read."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from pydantic import SecretStr

from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from tests.integration.api.process_support import AUTH, process_server, submit, wait_settled
from tests.integration.api.support import SAMPLES, Answer, ApiServer
from tests.integration.people.support import LIB, dlib_like, insert_faces

pytestmark = pytest.mark.slow

PEOPLE, EACH, STRANGERS = 3, 5, 4


def cluster(server: ApiServer, body: dict[str, Any], *, key: bool = True) -> Answer:
    headers = AUTH if key else {"Content-Type": "application/json"}
    return server.request("POST", "/cluster", json.dumps(body).encode(), headers, timeout=120)


def error(answer: Answer, status: int, kind: str) -> str:
    assert answer.status == status, answer.body
    body = answer.json()
    assert (body["status"], body["error"]) == (status, kind), body
    return str(body["detail"])


async def _seed(dsn: str, faces: np.ndarray, prefix: str) -> list[int]:
    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), max_size=2) as queue:
        await queue.ensure_library(LIB)
    conn = await asyncpg.connect(dsn)
    try:
        return await insert_faces(conn, faces, prefix)
    finally:
        await conn.close()


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM facescan.{table}"))
    finally:
        await conn.close()


def count(dsn: str, table: str) -> int:
    return asyncio.run(_count(dsn, table))


@pytest.fixture
def seeded(dsn: str) -> list[int]:
    """Library "photos": 3 people of 5 faces each (one per photo), then 4 strangers."""
    synthetic = dlib_like(seed=7, people=PEOPLE, faces_each=EACH, strangers=STRANGERS)
    return asyncio.run(_seed(dsn, synthetic["faces"], "seeded"))


@pytest.fixture
def served(dsn: str, tmp_path: Path) -> Iterator[ApiServer]:
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        shutil.copy(SAMPLES / name, root / name)
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log", roots=(root,))
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()


def truth(faces: list[int]) -> list[list[int]]:
    return [faces[p * EACH : (p + 1) * EACH] for p in range(PEOPLE)]


def test_a_preview_finds_each_seeded_person_and_the_strangers_and_writes_nothing(
    seeded: list[int], served: ApiServer, dsn: str
) -> None:
    paths = [f"seeded/{i:06d}.jpg" for i in range(len(seeded))]

    answer = cluster(served, {"library": LIB, "paths": paths})

    assert answer.status == 200, answer.body
    result = answer.json()
    assert (result["applied"], result["faces"]) == (False, len(seeded))
    assert sorted(c["faces"] for c in result["clusters"]) == truth(seeded)
    for c in result["clusters"]:
        assert (c["count"], c["model"], c["person_id"]) == (EACH, "dlib", None)
        representative = c["representative"]
        assert representative["face_id"] in c["faces"]
        assert representative["path"] == paths[seeded.index(representative["face_id"])]
        assert representative["box"] == {"top": 10, "right": 60, "bottom": 70, "left": 10}
    assert [f["face_id"] for f in result["noise"]] == seeded[-STRANGERS:]
    whole = cluster(served, {"library": LIB}).json()
    assert (whole["clusters"], whole["noise"]) == (result["clusters"], result["noise"])
    # a subset: two people's faces only
    some = cluster(served, {"library": LIB, "paths": paths[: 2 * EACH]}).json()
    assert sorted(c["faces"] for c in some["clusters"]) == truth(seeded)[:2]
    for table in ("people", "face_people", "people_settings"):
        assert count(dsn, table) == 0, table


def test_apply_makes_unnamed_people_of_the_clusters(
    seeded: list[int], served: ApiServer, dsn: str
) -> None:
    refused = cluster(served, {"library": LIB, "paths": ["seeded/000000.jpg"], "apply": True})
    error(refused, 422, "invalid_request")

    answer = cluster(served, {"library": LIB, "apply": True})

    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["applied"] is True
    assert sorted(c["faces"] for c in result["clusters"]) == truth(seeded)
    people = {c["person_id"] for c in result["clusters"]}
    assert None not in people
    assert len(people) == PEOPLE
    assert [f["face_id"] for f in result["noise"]] == seeded[-STRANGERS:]
    assert count(dsn, "people") == PEOPLE
    listed = served.request("GET", f"/people?library={LIB}", headers=AUTH).json()["people"]
    assert sorted((p["id"], p["name"], p["matched"]) for p in listed) == sorted(
        (p, None, EACH) for p in people
    )
    again = cluster(served, {"library": LIB, "apply": True}).json()
    assert (again["faces"], again["clusters"]) == (STRANGERS, [])


def test_the_faces_of_process_jobs_are_clustered_by_media_id(
    served: ApiServer, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for n, name in enumerate(("obama.jpg", "obama2.jpg", "biden.jpg")):
        job = {"job_id": f"job-{n}", "media_id": f"m-{name}", "path": str(root / name)}
        assert submit(served, job).status == 202
    for n in range(3):
        assert wait_settled(served, f"job-{n}")["state"] == "done"

    answer = cluster(served, {"library": "api", "media_ids": ["m-obama.jpg", "m-biden.jpg"]})

    assert answer.status == 200, answer.body
    result = answer.json()
    # two faces: fewer than a cluster's smallest size (3), so both are noise
    assert (result["faces"], result["clusters"]) == (2, [])
    assert sorted(f["media_id"] for f in result["noise"]) == ["m-biden.jpg", "m-obama.jpg"]
    unknown = cluster(served, {"library": "api", "media_ids": ["m-obama.jpg", "m-nobody"]})
    assert "m-nobody" in error(unknown, 404, "not_found")
    error(cluster(served, {"library": "nowhere"}), 404, "not_found")
    error(cluster(served, {"library": "api", "paths": ["no/such.jpg"]}), 404, "not_found")


def test_more_faces_than_the_bound_are_refused_before_any_is_read(
    served: ApiServer, dsn: str
) -> None:
    rng = np.random.default_rng(3)
    asyncio.run(_seed(dsn, rng.normal(0, 0.06, (10_001, 128)), "many"))

    detail = error(cluster(served, {"library": LIB}), 413, "too_many_faces")
    assert "10001 faces" in detail
    error(cluster(served, {"library": LIB, "apply": True}), 413, "too_many_faces")
    assert count(dsn, "people") == 0


def test_cluster_needs_the_api_key_and_a_body_of_its_shape(served: ApiServer) -> None:
    error(cluster(served, {"library": LIB}, key=False), 401, "unauthorized")
    error(cluster(served, {"library": LIB, "extra": 1}), 400, "invalid_request")
    error(cluster(served, {"library": ""}), 400, "invalid_request")
    error(cluster(served, {"library": LIB, "paths": ["a\u0000b"]}), 400, "invalid_request")
    document = served.request("GET", "/openapi.json", headers=AUTH).json()
    responses = document["paths"]["/cluster"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "422", "503"} <= set(responses)
