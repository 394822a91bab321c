"""The InsightFace backend (SCRFD + ArcFace over onnxruntime) with small test-built models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from facescan_detector.backends import create_detector
from facescan_detector.backends.insightface_backend import (
    ARCFACE_TEMPLATE,
    InsightFaceDetector,
    align_face,
    invert_affine,
    letterbox,
    similarity_transform,
    to_blob,
)
from facescan_detector.errors import DetectorOOM, StartupError, UnknownModel

from .conftest import (
    DEFAULT_FACES,
    FACE_A,
    FACE_B,
    arcface_model,
    arcface_reference,
    arcface_weights,
    scrfd_model,
    write_models,
)


def noise_image(width: int, height: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def expected_box(canvas_box: tuple[float, ...], scale: float) -> tuple[float, ...]:
    x1, y1, x2, y2 = (v / scale for v in canvas_box)
    return y1, x2, y2, x1  # top, right, bottom, left


def test_scrfd_boxes_landmarks_scores_map_back_through_the_letterbox(insightface_dir: Path) -> None:
    detector = create_detector("insightface", model_dir=insightface_dir)
    faces = detector.detect(noise_image(1280, 886))  # letterboxed to 640x443: scale 0.5
    assert [f.score for f in faces] == pytest.approx([FACE_A.score, FACE_B.score])
    for face, fake in zip(faces, (FACE_A, FACE_B), strict=True):
        assert (face.top, face.right, face.bottom, face.left) == pytest.approx(
            expected_box(fake.canvas_box, 0.5)
        )
        expected = [(x / 0.5, y / 0.5) for x, y in fake.canvas_points]
        np.testing.assert_allclose(np.array(face.landmarks), np.array(expected), atol=1e-4)
    assert faces[0].landmarks[0] == pytest.approx((448.0, 304.0))


def test_portrait_images_letterbox_on_the_height(insightface_dir: Path) -> None:
    detector = create_detector("insightface", model_dir=insightface_dir)
    faces = detector.detect(noise_image(400, 800))  # 320x640 in the canvas: scale 0.8
    assert (faces[0].top, faces[0].right, faces[0].bottom, faces[0].left) == pytest.approx(
        expected_box(FACE_A.canvas_box, 0.8)
    )


def test_nms_removes_the_duplicate_and_the_threshold_the_weak_face(insightface_dir: Path) -> None:
    faces = create_detector("insightface", model_dir=insightface_dir).detect(noise_image(640, 640))
    assert len(DEFAULT_FACES) == 4
    assert [f.score for f in faces] == pytest.approx([0.9, 0.7])


def test_an_image_without_faces_gives_an_empty_list(tmp_path: Path) -> None:
    directory = write_models(tmp_path, det=scrfd_model(()), rec=arcface_model(arcface_weights()))
    assert create_detector("insightface", model_dir=directory).detect(noise_image(300, 200)) == []


def test_boxes_are_clipped_to_the_image(tmp_path: Path) -> None:
    edge = FACE_A.__class__(8, 1, 1, 0, 0.95, (3, 3, 2, 2), FACE_A.keypoints)
    directory = write_models(
        tmp_path, det=scrfd_model((edge,)), rec=arcface_model(arcface_weights())
    )
    [face] = create_detector("insightface", model_dir=directory).detect(noise_image(640, 640))
    assert (face.top, face.left) == (0.0, 0.0)
    assert face.landmarks[0] == pytest.approx((8 - 16, 8 - 8))  # landmarks are not clipped


def test_batched_output_layout_decodes_the_same(tmp_path: Path) -> None:
    directory = write_models(
        tmp_path, scrfd=scrfd_model(batched=True), arcface=arcface_model(arcface_weights())
    )
    faces = create_detector("insightface", model_dir=directory).detect(noise_image(1280, 886))
    assert [f.score for f in faces] == pytest.approx([0.9, 0.7])
    assert faces[1].left == pytest.approx(FACE_B.canvas_box[0] / 0.5)


def test_embeddings_are_arcface_of_the_aligned_rgb_crop_l2_normalised(
    insightface_dir: Path,
) -> None:
    pixels = noise_image(1280, 886)
    detector = create_detector("insightface", model_dir=insightface_dir)
    faces = detector.detect(pixels)
    assert detector.embedding_dim == 512
    for face in faces:
        assert face.embedding.shape == (512,)
        assert face.embedding.dtype == np.float32
        assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)
        crop = align_face(pixels, np.array(face.landmarks))
        raw = arcface_reference(to_blob(crop, 127.5, 127.5), arcface_weights())
        np.testing.assert_allclose(face.embedding, raw / np.linalg.norm(raw), atol=1e-5)
    assert float(np.dot(faces[0].embedding, faces[1].embedding)) < 0.9


def test_blob_is_rgb_nchw_normalised_like_insightface() -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 2] = 255, 0
    blob = to_blob(pixels, 127.5, 128.0)
    assert blob.shape == (1, 3, 2, 2)
    assert blob.dtype == np.float32
    assert blob[0, 0, 0, 0] == pytest.approx((255 - 127.5) / 128)
    assert blob[0, 2, 0, 0] == pytest.approx(-127.5 / 128)


def test_letterbox_halves_like_cv2_linear_resize_and_pads_black() -> None:
    pixels = noise_image(1280, 886)
    canvas, scale = letterbox(pixels, 640, 640)
    assert scale == 0.5
    assert canvas.shape == (640, 640, 3)
    blocks = pixels.reshape(443, 2, 640, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(canvas[:443].astype(np.float64) - blocks).max() <= 0.5
    assert not canvas[443:].any()


def test_similarity_transform_recovers_rotation_scale_translation() -> None:
    angle, scale, shift = math.radians(20), 1.7, np.array([31.0, -12.0])
    rotation = scale * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    moved = ARCFACE_TEMPLATE @ rotation.T + shift
    matrix = similarity_transform(ARCFACE_TEMPLATE, moved)
    np.testing.assert_allclose(matrix, np.hstack([rotation, shift[:, None]]), atol=1e-9)


def test_alignment_samples_the_image_where_the_template_lands() -> None:
    # R = 2x, G = 2y: bilinear sampling of a linear image is exact, so every crop pixel
    # must be within rounding (0.5) of 2 x its source position; half a pixel off is 1.
    ys, xs = np.mgrid[0:128, 0:128].astype(np.float64)
    pixels = np.stack([xs * 2, ys * 2, np.full_like(xs, 100)], axis=-1).astype(np.uint8)
    angle, scale = math.radians(-15), 0.6
    to_image = np.array(
        [
            [scale * math.cos(angle), -scale * math.sin(angle), 30.0],
            [scale * math.sin(angle), scale * math.cos(angle), 25.0],
        ]
    )
    landmarks = ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    crop = align_face(pixels, landmarks)
    assert crop.shape == (112, 112, 3)
    np.testing.assert_allclose(invert_affine(invert_affine(to_image)), to_image, atol=1e-9)
    cy, cx = np.mgrid[0:112, 0:112].astype(np.float64)
    src_x = to_image[0, 0] * cx + to_image[0, 1] * cy + to_image[0, 2]
    src_y = to_image[1, 0] * cx + to_image[1, 1] * cy + to_image[1, 2]
    assert np.abs(crop[..., 0] - 2 * src_x).max() <= 0.5 + 1e-6
    assert np.abs(crop[..., 1] - 2 * src_y).max() <= 0.5 + 1e-6


def test_models_are_found_by_shape_whatever_their_names(tmp_path: Path) -> None:
    directory = write_models(
        tmp_path, a_recognizer=arcface_model(arcface_weights()), z_detector=scrfd_model()
    )
    assert len(create_detector("insightface", model_dir=directory).detect(noise_image(64, 64)))


def test_missing_directory_is_a_startup_error_naming_it_and_the_files(tmp_path: Path) -> None:
    missing = tmp_path / "buffalo_l"
    with pytest.raises(StartupError, match="buffalo_l does not exist") as caught:
        create_detector("insightface", model_dir=missing).load()
    assert "det_10g.onnx" in str(caught.value)
    assert "w600k_r50.onnx" in str(caught.value)


def test_empty_directory_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="is empty"):
        create_detector("insightface", model_dir=tmp_path).detect(noise_image(8, 8))


def test_wrong_shaped_recognizer_is_a_startup_error(tmp_path: Path) -> None:
    directory = write_models(
        tmp_path, det_10g=scrfd_model(), w600k_r50=arcface_model(arcface_weights(), side=64)
    )
    with pytest.raises(StartupError, match=r"no usable recognizer.*w600k_r50\.onnx"):
        create_detector("insightface", model_dir=directory).load()


def test_scrfd_without_keypoints_and_unreadable_files_are_rejected(tmp_path: Path) -> None:
    directory = write_models(
        tmp_path, det_500m=scrfd_model(keypoints=False), w600k=arcface_model(arcface_weights())
    )
    (directory / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(StartupError, match="no usable detector") as caught:
        create_detector("insightface", model_dir=directory).load()
    assert "without keypoints" in str(caught.value)
    assert "broken.onnx: unreadable" in str(caught.value)


def test_unknown_model_name_raises_unknown_model() -> None:
    with pytest.raises(UnknownModel, match="scrfd"):
        create_detector("scrfd")


def test_unavailable_execution_provider_is_a_startup_error(insightface_dir: Path) -> None:
    detector = create_detector(
        "insightface", model_dir=insightface_dir, providers=["NoSuchExecutionProvider"]
    )
    with pytest.raises(StartupError, match="NoSuchExecutionProvider"):
        detector.load()


def test_onnxruntime_allocation_failure_is_host_oom_with_cause(tmp_path: Path) -> None:
    directory = write_models(
        tmp_path, det=scrfd_model(huge_allocation=True), rec=arcface_model(arcface_weights())
    )
    detector = create_detector("insightface", model_dir=directory)
    with pytest.raises(DetectorOOM) as caught:
        detector.detect(noise_image(64, 64))
    assert caught.value.gpu is False
    assert "Failed to allocate memory" in str(caught.value.__cause__)


def test_load_is_idempotent_and_close_frees_the_sessions(insightface_dir: Path) -> None:
    detector = InsightFaceDetector(insightface_dir)
    detector.load()
    sessions = dict(detector._sessions)
    detector.load()
    assert detector._sessions == sessions
    detector.close()
    assert not detector.loaded
    assert detector._sessions == {}
    assert len(detector.detect(noise_image(640, 640))) == 2
