"""/people over real HTTP: a real server with a real database, whose library holds the
sample photos with their real dlib faces; a person added from an uploaded photo is found
in their other photo, renamed, hidden, merged and unmerged, listed a page at a time, and
every bad request gets its typed error and changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from PIL import Image
from pydantic import SecretStr

from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from tests.integration.api.process_support import AUTH, process_server
from tests.integration.api.support import KEYS, SAMPLES, Answer, ApiServer, server_env
from tests.integration.people.support import LIB, commit_images, sample_faces

pytestmark = pytest.mark.slow

SCANNED = ("obama.jpg", "obama2.jpg", "biden.jpg", "group_t1.jpg")
KEY = {"Authorization": AUTH["Authorization"]}

Field = tuple[str, str | tuple[str, bytes]]


def form(fields: Sequence[Field]) -> tuple[bytes, str]:
    """A multipart/form-data body of text and file fields (a name may repeat)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, str):
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            parts.append(head.encode() + value.encode() + b"\r\n")
        else:
            filename, data = value
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            )
            parts.append(head.encode() + data + b"\r\n")
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def add(
    server: ApiServer, name: str, photos: Sequence[str | tuple[str, bytes]], *extra: Field
) -> Answer:
    files: list[Field] = [
        ("photos", (p, (SAMPLES / p).read_bytes()) if isinstance(p, str) else p) for p in photos
    ]
    body, content_type = form([("name", name), ("library", LIB), *files, *extra])
    return server.request("POST", "/people", body, {**KEY, "Content-Type": content_type})


def get(server: ApiServer, path: str) -> Answer:
    return server.request("GET", path, headers=KEY, timeout=30)


def send(server: ApiServer, method: str, path: str, body: Any) -> Answer:
    return server.request(method, path, json.dumps(body).encode(), AUTH, timeout=30)


def error(answer: Answer, status: int, kind: str) -> str:
    assert answer.status == status, answer.body
    body = answer.json()
    assert (body["status"], body["error"]) == (status, kind), body
    return str(body["detail"])


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 180, 160)).save(out, "PNG")
    return out.getvalue()


async def _scan(dsn: str) -> None:
    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), max_size=2) as queue:
        await queue.ensure_library(LIB)
        await commit_images(queue, {n: sample_faces(n) for n in SCANNED})


async def _fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    return asyncio.run(_fetchval(dsn, sql, *args))


@pytest.fixture
def served(dsn: str, tmp_path: Path) -> Iterator[ApiServer]:
    """The server over a database whose library "photos" has the samples, detected."""
    asyncio.run(_scan(dsn))
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log")
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()


def paths(person: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {f["path"]: (f["status"], f["source"]) for f in person["faces"]}


def test_a_person_added_from_an_uploaded_photo_is_tagged_in_their_other_photo(
    served: ApiServer, dsn: str
) -> None:
    answer = add(served, "Barack Obama", ["obama.jpg"])

    assert answer.status == 201, answer.body
    added = answer.json()
    upload = ".facescan/uploads/" + hashlib.sha256((SAMPLES / "obama.jpg").read_bytes()).hexdigest()
    assert answer.headers["location"] == f"/people/{added['id']}"
    assert (added["name"], added["references"], added["tagged"]) == ("Barack Obama", 1, 2)
    assert paths(added) == {
        upload: ("matched", "user"),
        "obama.jpg": ("matched", "automatic"),
        "obama2.jpg": ("matched", "automatic"),
    }
    distance = next(f["distance"] for f in added["faces"] if f["path"] == "obama2.jpg")
    assert 0.3 < distance < 0.4  # dlib: obama.jpg to obama2.jpg 0.346
    # the upload is a done image of the library with its detection, by the API's pool
    worker = fetchval(
        dsn,
        "SELECT d.worker FROM facescan.images i JOIN facescan.detections d ON d.image_id = i.id "
        "WHERE i.library = $1 AND i.path = $2 AND i.state = 'done' AND i.face_count = 1",
        LIB,
        upload,
    )
    assert worker == "api-upload"

    by_id = get(served, f"/people/{added['id']}").json()
    by_name = get(served, "/people/" + quote("Barack Obama") + f"?library={LIB}").json()
    assert by_id == by_name
    assert (by_id["matched"], by_id["pending"]) == (3, 0)
    assert paths(by_id) == paths(added)
    first = get(served, f"/people/{added['id']}?limit=2").json()
    rest = get(served, f"/people/{added['id']}?limit=2&cursor={first['next']}").json()
    assert [f["face_id"] for f in first["faces"] + rest["faces"]] == [
        f["face_id"] for f in by_id["faces"]
    ]
    assert rest["next"] is None


def test_rename_hide_merge_and_undo(served: ApiServer) -> None:
    obama = add(served, "Barack Obama", ["obama.jpg"]).json()
    biden = add(served, "Joe Biden", ["biden.jpg"]).json()
    assert paths(biden) == {
        ".facescan/uploads/" + hashlib.sha256((SAMPLES / "biden.jpg").read_bytes()).hexdigest(): (
            "matched",
            "user",
        ),
        "biden.jpg": ("matched", "automatic"),
    }

    renamed = send(served, "PATCH", f"/people/{obama['id']}", {"name": "Obama"})
    assert renamed.status == 200, renamed.body
    assert renamed.json()["name"] == "Obama"
    assert get(served, "/people/Obama").json()["id"] == obama["id"]
    error(get(served, "/people/" + quote("Barack Obama")), 404, "not_found")
    taken = send(served, "PATCH", f"/people/{obama['id']}", {"name": "Joe Biden"})
    assert "Joe Biden" in error(taken, 409, "duplicate_person")
    error(send(served, "PATCH", f"/people/{obama['id']}", {"name": " "}), 422, "invalid_name")

    assert send(served, "PATCH", "/people/Obama", {"hidden": True}).json()["hidden"] is True
    listed = get(served, "/people").json()
    assert [p["name"] for p in listed["people"]] == ["Joe Biden"]
    every = get(served, "/people?hidden=true").json()
    assert [(p["name"], p["matched"], p["hidden"]) for p in every["people"]] == [
        ("Joe Biden", 2, False),
        ("Obama", 3, True),
    ]

    merged = send(served, "POST", f"/people/{obama['id']}/merge", {"other": str(biden["id"])})
    assert merged.status == 200, merged.body
    assert merged.json()["faces"] == 2
    assert get(served, f"/people/{obama['id']}").json()["matched"] == 5
    error(get(served, f"/people/{biden['id']}"), 404, "not_found")
    itself = send(served, "POST", "/people/Obama/merge", {"other": "Obama"})
    error(itself, 422, "same_person")

    undone = served.request("POST", f"/people/undo?library={LIB}", headers=KEY)
    assert undone.status == 200, undone.body
    assert (undone.json()["action"], undone.json()["restored"]) == ("merge", 2)
    assert get(served, f"/people/{biden['id']}").json()["matched"] == 2
    assert get(served, f"/people/{obama['id']}").json()["matched"] == 3
    nothing = served.request("POST", f"/people/undo?library={LIB}", headers=KEY)
    error(nothing, 409, "nothing_to_undo")


def test_a_photo_of_several_faces_needs_a_face_and_bad_uploads_change_nothing(
    served: ApiServer, dsn: str
) -> None:
    images = fetchval(dsn, "SELECT count(*) FROM facescan.images")

    several = add(served, "Someone", ["group_t1.jpg"])
    detail = error(several, 422, "face_choice_needed")
    assert "6 faces" in detail
    assert "6: top" in detail
    error(add(served, "Someone", [("blank.png", blank_png())]), 422, "no_face")
    error(add(served, "Someone", ["group_t1.jpg"], ("face", "7")), 422, "no_face")
    error(add(served, "Someone", [("notes.txt", b"not an image at all")]), 415, "unsupported_image")
    error(add(served, "Someone", [("empty.jpg", b"")]), 400, "invalid_request")
    error(add(served, "\t", ["obama.jpg"]), 422, "invalid_name")
    body, content_type = form(
        [
            ("name", "Someone"),
            ("library", "nowhere"),
            ("photos", ("o.jpg", (SAMPLES / "obama.jpg").read_bytes())),
        ]
    )
    nowhere = served.request("POST", "/people", body, {**KEY, "Content-Type": content_type})
    error(nowhere, 404, "not_found")
    assert fetchval(dsn, "SELECT count(*) FROM facescan.images") == images
    assert fetchval(dsn, "SELECT count(*) FROM facescan.people") == 0

    chosen = add(served, "Someone", ["group_t1.jpg"], ("face", "2"))
    assert chosen.status == 201, chosen.body
    assert chosen.json()["references"] == 1
    error(add(served, "Someone", ["obama.jpg"]), 409, "duplicate_person")
    # the same photo again is the same image: its face 2 is Someone's already
    taken = add(served, "Someone Else", ["group_t1.jpg"], ("face", "2"))
    error(taken, 409, "face_taken")
    assert fetchval(dsn, "SELECT count(*) FROM facescan.images") == images + 1


def test_people_are_listed_a_page_at_a_time_and_a_bad_cursor_is_refused(
    served: ApiServer, dsn: str
) -> None:
    names = ["Ada", "Bea", "Cyd", "Dot", "Eve"]
    for name in reversed(names):
        fetchval(dsn, "INSERT INTO facescan.people (library, name) VALUES ($1, $2)", LIB, name)

    seen, cursor, pages = [], "", 0
    while True:
        page = get(
            served, f"/people?library={LIB}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        )
        assert page.status == 200, page.body
        seen += [p["name"] for p in page.json()["people"]]
        pages += 1
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert (seen, pages) == (names, 3)
    error(get(served, "/people?cursor=not-a-cursor"), 400, "invalid_cursor")
    error(get(served, "/people/Ada?cursor=not-a-cursor"), 400, "invalid_cursor")
    error(get(served, "/people?limit=0"), 400, "invalid_request")
    error(get(served, "/people/999999"), 404, "not_found")
    error(get(served, "/people/99999999999999999999999"), 404, "not_found")
    error(get(served, "/people/Nobody"), 404, "not_found")


def test_every_people_route_needs_the_api_key(served: ApiServer) -> None:
    for method, path in [
        ("GET", "/people"),
        ("GET", "/people/1"),
        ("POST", "/people"),
        ("PATCH", "/people/1"),
        ("POST", "/people/1/merge"),
        ("POST", "/people/undo"),
    ]:
        answer = served.request(method, path, b"{}", {"Content-Type": "application/json"})
        error(answer, 401, "unauthorized")
    wrong = served.request("GET", "/people", headers={"Authorization": "Bearer nope"})
    error(wrong, 401, "unauthorized")
    document = get(served, "/openapi.json").json()
    for path in ("/people", "/people/{person}", "/people/{person}/merge", "/people/undo"):
        for operation in document["paths"][path].values():
            assert {"401", "404", "503"} <= set(operation["responses"]) or path in (
                "/people",
                "/people/undo",
            ), (path, operation["responses"].keys())


def test_without_a_database_people_is_off(server: ApiServer) -> None:
    answer = server.request("GET", "/people", headers={"Authorization": f"Bearer {KEYS[0]}"})
    assert "is off" in error(answer, 404, "not_found")
    document = server.request(
        "GET", "/openapi.json", headers={"Authorization": f"Bearer {KEYS[0]}"}
    )
    assert not any(p.startswith(("/people", "/cluster")) for p in document.json()["paths"])


def test_a_database_alone_serves_people_without_process(dsn: str, tmp_path: Path) -> None:
    """No --media-dir (/process off): /people and /cluster still work on the database."""
    asyncio.run(_scan(dsn))
    env = server_env(FACESCAN_API_KEYS=KEYS[0], FACESCAN_DSN=dsn)
    api = ApiServer(["--threads", "1"], env, tmp_path / "server.log")
    try:
        assert add(api, "Barack Obama", ["obama.jpg"]).status == 201
        listed = get(api, f"/people?library={LIB}").json()
        assert [(p["name"], p["matched"]) for p in listed["people"]] == [("Barack Obama", 3)]
        job = send(api, "POST", "/process", {"job_id": "j", "media_id": "m", "path": "/x.jpg"})
        assert job.status == 503  # /process needs --media-dir
    finally:
        assert api.stop() == 0, api.output()
