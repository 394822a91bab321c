"""`facescan serve --immich` speaks Immich's machine-learning API for facial recognition:
requests built byte for byte as Immich's server builds them (undici's FormData: the
`entries` JSON string, then the image as a Blob named "blob"), answers checked against
the shape Immich's server reads (machine-learning.repository.ts), over real HTTP to a
real server whose workers run InsightFace with small ONNX models built here (SCRFD- and
ArcFace-shaped: the real weights cannot be downloaded)."""

from __future__ import annotations

import io
import json
import math
import random
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from tests.integration.api.support import (
    DETECTOR,
    KEYS,
    SAMPLES,
    Answer,
    ApiServer,
    server_env,
)
from tests.unit.detector.conftest import arcface_model, arcface_weights, scrfd_model, write_models

pytestmark = pytest.mark.slow

PHOTO = (SAMPLES / "group_t1.jpg").read_bytes()
"""1280x886; the test detector reports the same two faces in any image (scores 0.9 and
0.7; a duplicate is suppressed, a 0.49 one is under the 0.5 threshold)."""


# -- Immich's side: its request (getFormData) and the response type it parses --------


class ImmichBoundingBox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x1: StrictInt  # asset_face.boundingBoxX1 and siblings are integer columns
    y1: StrictInt
    x2: StrictInt
    y2: StrictInt


class ImmichFace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boundingBox: ImmichBoundingBox
    embedding: StrictStr  # stored as is into face_search.embedding, a vector(512)
    score: StrictFloat


class FacialRecognitionResponse(BaseModel):
    """`FacialRecognitionResponse` of Immich's machine-learning.repository.ts."""

    model_config = ConfigDict(extra="forbid")
    faces: list[ImmichFace] = Field(alias="facial-recognition")
    imageHeight: StrictInt
    imageWidth: StrictInt


def face_request(model: str = "buffalo_l", min_score: float = 0.7) -> dict[str, Any]:
    """What `detectFaces` sends (its `minScore` is the admin setting, default 0.7)."""
    return {
        "facial-recognition": {
            "detection": {"modelName": model, "options": {"minScore": min_score}},
            "recognition": {"modelName": model},
        }
    }


def immich_form(entries: Mapping[str, Any] | str, fields: Mapping[str, bytes | str]) -> Any:
    """The body and headers of Node's fetch for Immich's FormData: `entries` as
    JSON.stringify writes it, then `image` as a Blob (filename "blob") or `text`."""
    boundary = f"----formdata-undici-0{random.randrange(10**11):011d}"
    text = entries if isinstance(entries, str) else json.dumps(entries, separators=(",", ":"))
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="entries"\r\n\r\n{text}\r\n']
    body = "".join(parts).encode()
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="blob"\r\nContent-Type: application/octet-stream\r\n\r\n'
            )
            body += head.encode() + value + b"\r\n"
        else:
            body += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def predict(api: ApiServer, entries: Mapping[str, Any] | str, **fields: bytes | str) -> Answer:
    """POST /predict as Immich does: no API key, no other header."""
    body, headers = immich_form(entries, fields)
    return api.request("POST", "/predict", body, headers)


def faces_of(answer: Answer) -> FacialRecognitionResponse:
    assert answer.status == 200, answer.body
    return FacialRecognitionResponse.model_validate_json(answer.body)


def assert_error(answer: Answer, status: int, error: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    body: dict[str, Any] = answer.json()
    assert (body["error"], body["status"]) == (error, status), body
    return body


# -- the servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def immich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """--immich over one InsightFace worker with buffalo_l's file names, no waiting
    room (a second upload at once is refused), API keys set, full-size images."""
    base = tmp_path_factory.mktemp("immich")
    models = write_models(
        base / "buffalo_l", det_10g=scrfd_model(), w600k_r50=arcface_model(arcface_weights())
    )
    args = ["--model", "insightface", "--model-dir", str(models), "--immich", "-v"]
    args += ["--workers", "1", "--queue", "0", "--max-dimension", "0"]
    api = ApiServer(args, server_env(FACESCAN_API_KEYS=",".join(KEYS)), base / "server.log")
    yield api
    assert api.stop() == 0, api.output()


# -- facial recognition -------------------------------------------------------------------


def test_ping_answers_pong_without_a_key(immich: ApiServer) -> None:
    answer = immich.request("GET", "/ping")
    assert answer.status == 200
    assert answer.body == b"pong"
    assert answer.headers["content-type"].startswith("text/plain")


def test_faces_come_back_in_the_shape_immich_parses_without_a_key(immich: ApiServer) -> None:
    result = faces_of(predict(immich, face_request(min_score=0.5), image=PHOTO))

    assert (result.imageWidth, result.imageHeight) == (1280, 886)
    assert sorted(round(face.score, 2) for face in result.faces) == [0.7, 0.9]
    for face in result.faces:
        box = face.boundingBox
        assert 0 <= box.x1 < box.x2 <= 1280
        assert 0 <= box.y1 < box.y2 <= 886
        vector = json.loads(face.embedding)
        assert len(vector) == 512
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-5)


def test_faces_are_those_of_detect_boxes_as_x1_y1_x2_y2(immich: ApiServer) -> None:
    """The same image through /detect (with a key): the same boxes, scores, vectors."""
    detected = immich.detect(PHOTO)
    assert detected.status == 200, detected.body
    expected = sorted(
        (
            (f["box"]["left"], f["box"]["top"], f["box"]["right"], f["box"]["bottom"]),
            f["score"],
            f["embedding"]["vector"],
        )
        for f in detected.json()["faces"]
    )

    result = faces_of(predict(immich, face_request(min_score=0.5), image=PHOTO))

    got = sorted(
        (
            (f.boundingBox.x1, f.boundingBox.y1, f.boundingBox.x2, f.boundingBox.y2),
            f.score,
            json.loads(f.embedding),
        )
        for f in result.faces
    )
    assert got == expected


@pytest.mark.parametrize(("min_score", "scores"), [(0.5, [0.7, 0.9]), (0.8, [0.9]), (0.95, [])])
def test_min_score_keeps_faces_scored_at_least_it(
    immich: ApiServer, min_score: float, scores: list[float]
) -> None:
    result = faces_of(predict(immich, face_request(min_score=min_score), image=PHOTO))
    assert sorted(round(face.score, 2) for face in result.faces) == scores
    assert (result.imageWidth, result.imageHeight) == (1280, 886)


def test_a_model_name_with_immichs_organisation_prefix_is_the_same_pack(
    immich: ApiServer,
) -> None:
    result = faces_of(predict(immich, face_request("immich-app/buffalo_l", 0.5), image=PHOTO))
    assert len(result.faces) == 2


async def test_embeddings_go_into_a_pgvector_512_column_as_immich_stores_them(
    immich: ApiServer, dsn: str
) -> None:
    """Immich writes the `embedding` string as is into face_search.embedding
    (vector(512)) and compares faces by cosine distance."""
    first, second = faces_of(predict(immich, face_request(min_score=0.5), image=PHOTO)).faces
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE face_search (embedding vector(512) NOT NULL)")
        await connection.execute(
            "INSERT INTO face_search VALUES ($1::vector), ($2::vector)",
            first.embedding,
            second.embedding,
        )
        distance = await connection.fetchval(
            "SELECT $1::vector(512) <=> $1::vector(512)", first.embedding
        )
        assert await connection.fetchval("SELECT count(*) FROM face_search") == 2
    finally:
        await connection.close()
    assert distance == pytest.approx(0.0, abs=1e-6)


# -- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "field"),
    [
        ({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}, "image"),
        (
            {"clip": {"textual": {"modelName": "ViT-B-32__openai", "options": {"language": "en"}}}},
            "text",
        ),
        (
            {
                "ocr": {
                    "detection": {
                        "modelName": "PP-OCRv5_mobile",
                        "options": {"minScore": 0.5, "maxResolution": 736},
                    },
                    "recognition": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.8}},
                }
            },
            "image",
        ),
    ],
    ids=["clip-visual", "clip-textual", "ocr"],
)
def test_clip_and_ocr_are_not_served_and_say_so(
    immich: ApiServer, entries: dict[str, Any], field: str
) -> None:
    value: bytes | str = PHOTO if field == "image" else "a dog on a beach"
    body = assert_error(predict(immich, entries, **{field: value}), 501, "model_unavailable")
    assert "facial-recognition only" in body["detail"]
    assert next(iter(entries)) in body["detail"]


def test_a_pack_whose_recognizer_facescan_does_not_run_is_refused(immich: ApiServer) -> None:
    body = assert_error(
        predict(immich, face_request("antelopev2"), image=PHOTO), 501, "model_unavailable"
    )
    assert "glintr100.onnx" in body["detail"]
    body = assert_error(
        predict(immich, face_request("no-such-pack"), image=PHOTO), 501, "model_unavailable"
    )
    assert "buffalo_l" in body["detail"]


def truncated_jpeg() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(PHOTO)).save(out, "JPEG", quality=90)
    return out.getvalue()[:4000]


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"this is not an image at all", 415, "unsupported_image"),
        (truncated_jpeg(), 422, "undecodable_image"),
        (b"", 400, "invalid_request"),
    ],
    ids=["not-an-image", "truncated-jpeg", "empty"],
)
def test_bad_images_are_typed_4xx(immich: ApiServer, data: bytes, status: int, error: str) -> None:
    assert_error(predict(immich, face_request(), image=data), status, error)
    assert faces_of(
        predict(immich, face_request(min_score=0.5), image=PHOTO)
    ).faces  # still serving


@pytest.mark.parametrize(
    "entries",
    [
        "not json",
        "{}",
        {"facial-recognition": {"detection": {"modelName": "buffalo_l"}}},
        {"facial-recognition": {"detection": {"options": {}}, "recognition": {}}},
        face_request(min_score=1.5),
        {
            "facial-recognition": {
                "detection": {"modelName": "buffalo_l", "options": {"minScore": "high"}},
                "recognition": {"modelName": "buffalo_l"},
            }
        },
    ],
    ids=["not-json", "no-task", "no-recognition", "no-model-name", "score-over-1", "score-text"],
)
def test_malformed_entries_are_422_as_immich_answers_them(
    immich: ApiServer, entries: dict[str, Any] | str
) -> None:
    body = assert_error(predict(immich, entries, image=PHOTO), 422, "invalid_request")
    assert "entries" in body["detail"] or "recognition" in body["detail"]


def test_neither_image_nor_text_is_400(immich: ApiServer) -> None:
    assert_error(predict(immich, face_request()), 400, "invalid_request")
    assert_error(predict(immich, face_request(), text="a face"), 400, "invalid_request")


def test_openapi_documents_both_routes_with_immichs_field_names(immich: ApiServer) -> None:
    key = {"Authorization": f"Bearer {KEYS[0]}"}
    document = immich.request("GET", "/openapi.json", headers=key).json()
    assert document["paths"]["/ping"]["get"]["responses"].keys() == {"200", "503"}
    operation = document["paths"]["/predict"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    fields = document["components"]["schemas"][form.rsplit("/", 1)[1]]["properties"]
    assert fields.keys() == {"entries", "image", "text"}
    answer = document["components"]["schemas"]["PredictResponse"]["properties"]
    assert answer.keys() == {"facial-recognition", "imageHeight", "imageWidth"}
    assert {"400", "413", "415", "422", "501", "503"} <= operation["responses"].keys()


def test_the_other_routes_still_need_a_key(immich: ApiServer) -> None:
    assert_error(immich.detect(PHOTO, key=None), 401, "unauthorized")
    assert_error(immich.request("GET", "/metrics"), 401, "unauthorized")


def test_a_full_pool_is_503_with_retry_after(immich: ApiServer, tmp_path: Path) -> None:
    """One worker, no waiting room: while a big upload is detected, the next is refused
    at once; the big one is then answered."""
    image = Image.open(io.BytesIO(PHOTO)).convert("RGB").resize((9000, 6229))
    image.save(tmp_path / "big.jpg", quality=80)
    big = (tmp_path / "big.jpg").read_bytes()
    answers: list[Answer] = []
    slow = threading.Thread(
        target=lambda: answers.append(predict(immich, face_request(min_score=0.5), image=big))
    )
    slow.start()
    try:
        while immich.metric("facescan_api_pool_busy") != 1:
            assert slow.is_alive(), answers
        full = predict(immich, face_request(min_score=0.5), image=PHOTO)
    finally:
        slow.join(60)

    assert_error(full, 503, "busy")
    assert int(full.headers["retry-after"]) >= 1
    (served,) = answers
    assert faces_of(served).imageWidth == 9000


# -- off by default, and never with dlib's embeddings -----------------------------------


def test_without_the_option_predict_and_ping_are_404(server: ApiServer) -> None:
    key = {"Authorization": f"Bearer {KEYS[0]}"}
    body, headers = immich_form(face_request(), {"image": PHOTO})
    assert_error(server.request("POST", "/predict", body, {**headers, **key}), 404, "not_found")
    assert_error(server.request("GET", "/ping", headers=key), 404, "not_found")
    assert_error(server.request("GET", "/ping"), 401, "unauthorized")


def test_an_image_left_to_hog_by_memory_is_refused_not_given_dlib_vectors(
    tmp_path: Path,
) -> None:
    """A detector whose every run fails to allocate (a real onnxruntime allocation
    failure): the cascade ends at hog, whose 128-d vectors Immich cannot store."""
    models = write_models(
        tmp_path / "buffalo_l",
        det_10g=scrfd_model(huge_allocation=True),
        w600k_r50=arcface_model(arcface_weights()),
    )
    args = ["--model", "insightface", "--model-dir", str(models), "--immich", "--no-auth"]
    api = ApiServer(args, server_env(), tmp_path / "server.log")
    try:
        body = assert_error(
            predict(api, face_request(min_score=0.5), image=PHOTO), 413, "image_too_large"
        )
        assert "512-d" in body["detail"]
        detected = api.detect(PHOTO, key=None).json()  # /detect gives them, marked degraded
        assert (detected["model"], detected["degraded"]) == ("hog", True)
    finally:
        assert api.stop() == 0, api.output()


@pytest.mark.parametrize("model", ["hog", "cnn"])
def test_immich_with_a_dlib_model_refuses_to_start(model: str) -> None:
    done = subprocess.run(
        [str(DETECTOR), "serve", "--immich", "--model", model, "--no-auth"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--immich needs --model insightface" in done.stderr
    assert "128-d" in done.stderr
