"""Every bad upload of the detector's corpus (tests/integration/detector/test_bad_inputs,
tests/unit/detector/test_loading) through POST /detect: each gets its typed 4xx body,
never a 500, and the server goes on detecting. The corpus's path cases (a symlink out
of the root, a missing or unreadable file) have no upload form: an upload is bytes."""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Callable, Iterator

import pillow_heif
import pytest

from tests.integration.api.conftest import MAX_UPLOAD_MB
from tests.integration.api.support import KEYS, SAMPLES, ApiServer, multipart
from tests.integration.detector.support import png_header_only
from tests.unit.detector.test_loading import photo

pytestmark = pytest.mark.slow

OBAMA = (SAMPLES / "obama.jpg").read_bytes()
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


def truncated_heic() -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(photo().resize((64, 80))).save(buffer, quality=90)
    return buffer.getvalue()[:-200]


CORPUS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "truncated.jpg": (lambda: OBAMA[: len(OBAMA) // 2], 422, "undecodable_image"),
    "empty.jpg": (lambda: b"", 400, "invalid_request"),
    "notes.jpg": (lambda: b"shopping list: milk, eggs\n", 415, "unsupported_image"),
    "one-byte.jpg": (lambda: b"x", 415, "unsupported_image"),
    "huge.png": (lambda: png_header_only(100_000, 100_000), 413, "image_too_large"),
    "bomb.png": (lambda: png_header_only(20_000, 10_000), 413, "image_too_large"),
    "cut.heic": (truncated_heic, 422, "undecodable_image"),
    "garbage.png": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 422, "undecodable_image"),
}


@pytest.fixture(autouse=True)
def still_detects(server: ApiServer) -> Iterator[None]:
    """After each bad upload the same server still finds obama's face."""
    yield
    answer = server.detect(OBAMA)
    assert answer.status == 200, answer.body
    assert len(answer.json()["faces"]) == 1


def assert_typed(answer_status: int, body: dict[str, object], status: int, error: str) -> None:
    assert (answer_status, body["status"], body["error"]) == (status, status, error), body
    assert isinstance(body["detail"], str)
    assert body["detail"]


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_bad_file_gets_its_typed_4xx(server: ApiServer, name: str) -> None:
    make, status, error = CORPUS[name]
    answer = server.detect(make(), filename=name)
    assert_typed(answer.status, answer.json(), status, error)
    assert name not in answer.json()["detail"]  # the client's file name is never used


def test_body_over_the_limit_is_refused_from_its_length_before_it_is_sent(
    server: ApiServer,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/detect")
        conn.putheader("Authorization", AUTH["Authorization"])
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(MAX_UPLOAD_MB * 1024 * 1024 + 1))
        conn.endheaders()  # not one byte of the body
        response = conn.getresponse()
        assert_typed(response.status, json.loads(response.read()), 413, "upload_too_large")
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_cut_while_it_streams(server: ApiServer) -> None:
    body, content_type = multipart({"image": ("big.jpg", b"\xff" * (MAX_UPLOAD_MB << 20))})
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/detect",
            body=chunks,
            headers={**AUTH, "Content-Type": content_type},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert_typed(response.status, json.loads(response.read()), 413, "upload_too_large")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (OBAMA, "image/jpeg"),  # not a form
        (b"--x\r\nno headers\r\n--x--\r\n", "multipart/form-data; boundary=x"),
        (b"garbage", "multipart/form-data"),  # no boundary
        (multipart({"photo": ("a.jpg", OBAMA)})[0], None),  # no `image` field
    ],
    ids=["raw-jpeg", "broken-part", "no-boundary", "wrong-field"],
)
def test_a_request_that_is_not_one_image_form_is_400(
    server: ApiServer, body: bytes, content_type: str | None
) -> None:
    if content_type is None:
        body, content_type = multipart({"photo": ("a.jpg", OBAMA)})
    answer = server.request("POST", "/detect", body, {**AUTH, "Content-Type": content_type})
    assert_typed(answer.status, answer.json(), 400, "invalid_request")


def test_unknown_route_and_method_are_typed_too(server: ApiServer) -> None:
    missing = server.request("GET", "/nothing", headers=AUTH)
    assert_typed(missing.status, missing.json(), 404, "not_found")
    wrong = server.request("GET", "/detect", headers=AUTH)
    assert_typed(wrong.status, wrong.json(), 405, "method_not_allowed")
