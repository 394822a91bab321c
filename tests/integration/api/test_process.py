"""POST /process over real HTTP: a job's media goes through the queue (a real database,
`facescan-detector run` workers), its result reaches a real receiver, signed, exactly
once acknowledged, and a server killed mid-job finishes it when started again."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.api.process_support import (
    Receiver,
    file_route,
    http_server,
    job_status,
    process_server,
    submit,
    wait_settled,
)
from tests.integration.api.support import KEYS, SAMPLES
from tests.integration.detector.support import HOG_FACES

pytestmark = pytest.mark.slow


def without_callback(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "callback"}


def test_a_url_job_is_delivered_signed_once_to_a_receiver_that_fails_twice(
    dsn: str, tmp_path: Path
) -> None:
    receiver = Receiver(fail_first=2)
    routes = {"/group.jpg": file_route(SAMPLES / "group_t1.jpg"), "/hook": receiver.handle}
    with http_server(routes) as base:
        server = process_server(dsn, tmp_path / "media", tmp_path / "server.log")
        try:
            job = {
                "job_id": "job-1",
                "media_id": "m-1",
                "media_url": f"{base}/group.jpg",
                "callback_url": f"{base}/hook",
            }
            answer = submit(server, job)
            assert answer.status == 202, answer.body
            assert answer.json()["state"] in ("queued", "processing", "done")
            assert answer.headers["location"] == "/process/job-1"

            deliveries = receiver.wait(1)
            time.sleep(1.5)  # nothing more comes after the acknowledgement
            status = job_status(server, "job-1").json()
        finally:
            assert server.stop() == 0, server.output()
    assert [d.status for d in receiver.deliveries] == [503, 503, 200]
    assert len(deliveries) == 3
    assert all(d.signed for d in receiver.deliveries)
    assert [d.headers["X-Facescan-Delivery-Attempt"] for d in receiver.deliveries] == [
        "1",
        "2",
        "3",
    ]
    delivered = receiver.acknowledged()[0].json()
    assert delivered["state"] == "done"
    assert len(delivered["faces"]) == HOG_FACES["group_t1.jpg"]
    assert delivered["faces"][0]["embedding"]["model"] == "dlib"
    assert len(delivered["faces"][0]["embedding"]["vector"]) == 128
    assert without_callback(status) == delivered
    assert status["callback"]["attempts"] == 3
    assert status["callback"]["acknowledged_at"] is not None
    assert status["callback"]["last_error"] is None


def test_a_tampered_body_fails_the_receivers_check(tmp_path: Path) -> None:
    from facescan_api.callbacks import sign, verify

    header = sign(b"secret", b'{"a":1}', int(time.time()))
    assert verify(b"secret", b'{"a":1}', header)
    assert not verify(b"secret", b'{"a":2}', header)
    assert not verify(b"other", b'{"a":1}', header)
    assert not verify(b"secret", b'{"a":1}', header.replace("t=", "t=1"))


def test_a_path_job_is_detected_and_get_answers_its_result(dsn: str, tmp_path: Path) -> None:
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log", roots=(SAMPLES,))
    try:
        job = {"job_id": "p.1", "media_id": "obama", "path": str(SAMPLES / "obama.jpg")}
        assert submit(server, job).status == 202
        body = wait_settled(server, "p.1")
        again = submit(server, job)  # the same job again: the same job
        assert again.status == 202
        assert again.json()["job_id"] == "p.1"
        auth = {"Authorization": f"Bearer {KEYS[0]}"}
        document = server.request("GET", "/openapi.json", headers=auth).json()
    finally:
        assert server.stop() == 0, server.output()
    post = document["paths"]["/process"]["post"]
    assert post["security"] == [{"apiKey": []}]
    assert {"202", "401", "403", "409", "413", "422"} <= set(post["responses"])
    assert "/process/{job_id}" in document["paths"]
    schema = {"$ref": "#/components/schemas/JobStatus", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
    assert body["state"] == "done"
    assert body["kind"] == "image"
    assert body["duration_ms"] is None
    assert len(body["faces"]) == 1
    assert body["faces"][0]["frame_ms"] is None
    assert body["image"]["width"] > 0
    assert body["image"]["height"] > 0
    assert body["callback"] is None


def test_a_url_that_fails_to_download_settles_failed_and_the_callback_says_so(
    dsn: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    with http_server({"/hook": receiver.handle}) as base:
        server = process_server(dsn, tmp_path / "media", tmp_path / "server.log")
        try:
            job = {
                "job_id": "gone",
                "media_id": "m",
                "media_url": f"{base}/nothing.jpg",
                "callback_url": f"{base}/hook",
            }
            answer = submit(server, job)
            assert answer.status == 202, answer.body
            assert answer.json()["state"] == "failed"
            [delivery] = receiver.wait(1)
        finally:
            assert server.stop() == 0, server.output()
    body = delivery.json()
    assert body["state"] == "failed"
    assert body["error"]["type"] == "download_failed"
    assert "HTTP 404" in body["error"]["detail"]
    assert body["faces"] is None


def test_bad_jobs_are_typed_4xx_never_500(dsn: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes((SAMPLES / "obama.jpg").read_bytes())
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "escape.jpg").symlink_to(outside / "x.jpg")
    routes = {
        "/big": file_route(big),
        "/away": lambda _: (302, b"", {"Location": "http://localhost:1/x.jpg"}),
    }
    with http_server(routes) as base:
        server = process_server(
            dsn,
            tmp_path / "media",
            tmp_path / "server.log",
            roots=(tmp_path / "root",),
            extra=("--max-media-mb", "1"),
        )
        try:
            url = {"job_id": "u", "media_id": "m"}
            cases = [
                ({**url, "media_url": "http://example.com/a.jpg"}, 403, "url_not_allowed"),
                ({**url, "media_url": "ftp://127.0.0.1/a.jpg"}, 422, "url_not_allowed"),
                ({**url, "media_url": "file:///etc/passwd"}, 422, "url_not_allowed"),
                ({**url, "media_url": f"{base}/big"}, 413, "media_too_large"),
                ({**url, "media_url": f"{base}/away"}, 422, "redirect_refused"),
                ({**url, "path": str(outside / "x.jpg")}, 403, "path_not_allowed"),
                ({**url, "path": str(tmp_path / "root" / "escape.jpg")}, 403, "path_not_allowed"),
                ({**url, "path": str(tmp_path / "root" / "../outside/x.jpg")}, 422, None),
                ({**url, "path": str(tmp_path / "root" / "none.jpg")}, 422, "media_not_found"),
                ({**url, "path": "/x", "media_url": f"{base}/big"}, 400, "invalid_request"),
                ({"job_id": "bad id!", "media_id": "m", "path": "/x"}, 400, "invalid_request"),
                ({**url, "media_url": f"{base}/big", "callback_url": "ftp://x/"}, 422, None),
            ]
            for job, status, error in cases:
                answer = submit(server, job)
                assert answer.status == status, (job, answer.body)
                if error is not None:
                    assert answer.json()["error"] == error, (job, answer.body)

            first = {"job_id": "dup", "media_id": "a", "path": str(tmp_path / "root" / "none")}
            assert submit(server, first).status == 422  # refused: no job made
            ok = {"job_id": "dup", "media_id": "a", "media_url": f"{base}/missing"}
            assert submit(server, ok).status == 202
            conflict = submit(server, {**ok, "media_id": "b"})
            assert conflict.status == 409
            assert conflict.json()["error"] == "job_conflict"
            assert submit(server, ok, key=False).status == 401
            assert job_status(server, "nobody").status == 404
            assert server.request("GET", "/process/dup").status == 401
        finally:
            assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def test_a_callback_without_a_secret_configured_is_refused(dsn: str, tmp_path: Path) -> None:
    server = process_server(
        dsn, tmp_path / "media", tmp_path / "server.log", roots=(SAMPLES,), secret=None
    )
    try:
        job = {
            "job_id": "j",
            "media_id": "m",
            "path": str(SAMPLES / "obama.jpg"),
            "callback_url": "http://127.0.0.1:9/hook",
        }
        answer = submit(server, job)
    finally:
        assert server.stop() == 0, server.output()
    assert answer.status == 422
    assert answer.json()["error"] == "callback_not_configured"


def test_a_server_killed_mid_job_finishes_it_and_calls_back_after_a_restart(
    dsn: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    routes = {"/a.png": file_route(SAMPLES / "astronaut.png"), "/hook": receiver.handle}
    media, log = tmp_path / "media", tmp_path / "server.log"
    with http_server(routes) as base:
        server = process_server(dsn, media, log)
        job = {
            "job_id": "k",
            "media_id": "m",
            "media_url": f"{base}/a.png",
            "callback_url": f"{base}/hook",
        }
        assert submit(server, job).status == 202
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        assert receiver.deliveries == []

        again = process_server(dsn, media, tmp_path / "again.log")
        try:
            [delivery] = receiver.wait(1)
            time.sleep(1)
            status = job_status(again, "k").json()
        finally:
            assert again.stop() == 0, again.output()
    assert len(receiver.deliveries) == 1
    assert delivery.signed
    assert delivery.json()["state"] == "done"
    assert len(delivery.json()["faces"]) == HOG_FACES["astronaut.png"]
    assert without_callback(status) == delivery.json()
