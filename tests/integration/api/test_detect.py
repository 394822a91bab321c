"""POST /detect over real HTTP: the faces of the bundled photos are the detector's own
(the same loading and backend run here on the same file), boxes as a person sees the
image, and the OpenAPI document describes what the server answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from facescan_detector.backends import create_detector, scale_face
from facescan_detector.loading import load_image
from tests.integration.api.support import KEYS, SAMPLES, Answer, ApiServer
from tests.integration.detector.support import HOG_FACES, OBAMA_BOX
from tests.unit.detector.test_loading import exif, photo, stored_as

pytestmark = pytest.mark.slow


def detector_faces(root: Path, name: str) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """What the detector itself finds in root/name (hog, upsample 1, long side 1280):
    the display size and each face's box, landmarks and embedding."""
    loaded = load_image(root, name, max_dimension=1280)
    detector = create_detector("hog", upsample=1, threads=1)
    faces = []
    for face in detector.detect(loaded.pixels):
        f = scale_face(face, loaded.scale, loaded.original_width, loaded.original_height)
        faces.append(
            {
                "box": [round(f.top), round(f.right), round(f.bottom), round(f.left)],
                "score": float(f.score),
                "landmarks": [list(p) for p in f.landmarks],
                "embedding": [float(v) for v in f.embedding],
            }
        )
    detector.close()
    return (loaded.original_width, loaded.original_height), faces


def boxes(answer: dict[str, Any]) -> list[list[int]]:
    return [[f["box"][k] for k in ("top", "right", "bottom", "left")] for f in answer["faces"]]


@pytest.mark.parametrize("name", sorted(HOG_FACES))
def test_each_sample_photo_gets_the_detectors_own_faces(server: ApiServer, name: str) -> None:
    answer = server.detect((SAMPLES / name).read_bytes(), filename=name)

    assert answer.status == 200, answer.body
    body = answer.json()
    size, expected = detector_faces(SAMPLES, name)
    assert (body["image"]["width"], body["image"]["height"]) == size
    assert len(body["faces"]) == HOG_FACES[name]
    assert boxes(body) == [f["box"] for f in expected]
    for got, want in zip(body["faces"], expected, strict=True):
        assert got["score"] == pytest.approx(want["score"])
        assert got["landmarks"] == want["landmarks"]
        assert got["embedding"]["model"] == "dlib"
        assert got["embedding"]["vector"] == pytest.approx(want["embedding"], abs=1e-6)
    assert (body["model"], body["scale"], body["degraded"]) == ("hog", 1.0, False)
    assert body["processing_ms"] >= 0


def test_obama_box_is_face_recognitions_own(server: ApiServer) -> None:
    body = server.detect((SAMPLES / "obama.jpg").read_bytes()).json()
    assert boxes(body) == [list(OBAMA_BOX)]
    assert len(body["faces"][0]["landmarks"]) == 5
    assert len(body["faces"][0]["embedding"]["vector"]) == 128


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_upload_has_boxes_as_a_person_sees_it(
    server: ApiServer, tmp_path: Path, orientation: int
) -> None:
    stored_as(photo(), orientation).save(tmp_path / "r.jpg", quality=95, exif=exif(orientation))

    body = server.detect((tmp_path / "r.jpg").read_bytes()).json()

    assert (body["image"]["width"], body["image"]["height"]) == (910, 1137)  # upright
    assert boxes(body) == [f["box"] for f in detector_faces(tmp_path, "r.jpg")[1]]
    (box,) = boxes(body)
    assert box == pytest.approx(list(OBAMA_BOX), abs=12)  # where the upright photo has it


def test_openapi_document_describes_the_answers(server: ApiServer) -> None:
    auth = {"Authorization": f"Bearer {KEYS[1]}"}
    document = server.request("GET", "/openapi.json", headers=auth).json()

    detect = document["paths"]["/detect"]["post"]
    form = detect["requestBody"]["content"]["multipart/form-data"]["schema"]
    schema = document["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
    assert schema["required"] == ["image"]
    assert set(detect["responses"]) == {"200", "400", "401", "413", "415", "422", "503"}
    assert detect["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert {"/health", "/health/live", "/health/ready", "/metrics"} <= set(document["paths"])
    assert "security" not in document["paths"]["/health"]["get"]

    # a real answer and a real error validate against the document's schemas
    _validate(document, "DetectResponse", server.detect((SAMPLES / "group_t1.jpg").read_bytes()))
    refused = server.detect(b"not an image")
    assert refused.status == 415
    _validate(document, "ErrorBody", refused)


def _validate(document: dict[str, Any], name: str, answer: Answer) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(answer.json())


def test_health_needs_no_key_and_says_what_is_loaded(server: ApiServer) -> None:
    health = server.request("GET", "/health")
    assert health.status == 200
    body = health.json()
    assert body["status"] == "ok"
    assert (body["live"], body["ready"]) == (True, True)
    assert body["models_loaded"] == ["hog"]
    assert body["gpu_available"] is False
    assert body["version"] == "0.1.0"
    assert body["pool"]["workers"] == body["pool"]["ready"] == 1
    assert body["pool"]["capacity"] == 3  # 1 worker + a queue of 2 x workers
    assert body["database"] == {"configured": False, "reachable": None, "target": None}
    assert server.request("GET", "/health/live").json() == {"status": "ok"}
    assert server.request("GET", "/health/ready").status == 200


def test_metrics_count_requests_by_route_and_status(server: ApiServer) -> None:
    server.detect((SAMPLES / "obama2.jpg").read_bytes())
    server.detect(b"", key=KEYS[0])
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    text = server.request("GET", "/metrics", headers=auth).body.decode()

    assert 'facescan_api_requests_total{method="POST",route="/detect",status="200"}' in text
    assert 'facescan_api_requests_total{method="POST",route="/detect",status="400"}' in text
    assert 'facescan_api_request_duration_seconds_bucket{le="0.5",method="POST"' in text
    for gauge in ("workers", "ready", "busy", "waiting", "capacity", "saturation"):
        assert f"facescan_api_pool_{gauge} " in text
    assert server.metric("facescan_api_pool_capacity") == 3.0
