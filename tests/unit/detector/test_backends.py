"""The backend interface, the dlib detectors on real photographs, and error translation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail
from PIL import Image

from facescan_detector.backends import Face, FaceDetector, create_detector, scale_face
from facescan_detector.backends.base import Pixels, translate_error
from facescan_detector.backends.hardware import describe_hardware, select_providers
from facescan_detector.errors import DetectorError, DetectorOOM, StartupError, UnknownModel
from facescan_queue.types import ErrorType

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
OBAMA_HOG_BOX = (142, 617, 409, 349)  # face_recognition's own test, upsample 1
OBAMA_CNN_BOX = (144, 608, 389, 363)  # ... and its CNN box, within 25 px


def load(name: str, long_side: int | None = None) -> Pixels:
    with Image.open(SAMPLES / name) as image:
        rgb = image.convert("RGB")
    if long_side is not None:
        factor = long_side / max(rgb.size)
        rgb = rgb.resize((round(rgb.width * factor), round(rgb.height * factor)))
    return np.asarray(rgb)


def box(face: Face) -> tuple[float, float, float, float]:
    return face.top, face.right, face.bottom, face.left


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (same sys.path); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def hog() -> Iterator[FaceDetector]:
    detector = create_detector("hog")
    yield detector
    detector.close()


@pytest.fixture(scope="module")
def cnn() -> Iterator[FaceDetector]:
    detector = create_detector("cnn", upsample=0)
    yield detector
    detector.close()


def test_factory_serves_three_models_unloaded() -> None:
    dims = {name: create_detector(name) for name in ("hog", "cnn", "insightface")}
    assert {name: d.model_name for name, d in dims.items()} == {n: n for n in dims}
    assert [d.embedding_dim for d in dims.values()] == [128, 128, 512]
    assert not any(d.loaded for d in dims.values())


def test_unknown_model_raises_unknown_model() -> None:
    with pytest.raises(UnknownModel, match="'mtcnn'"):
        create_detector("mtcnn")


def test_hog_finds_obamas_box_exactly_like_face_recognition(hog: FaceDetector) -> None:
    [face] = hog.detect(load("obama.jpg"))
    assert box(face) == OBAMA_HOG_BOX
    assert face.score > 0
    assert len(face.landmarks) == 5
    assert face.embedding.shape == (128,)
    assert face.embedding.dtype == np.float32
    assert not face.embedding.flags.writeable


def test_hog_finds_six_faces_in_the_group_photo(hog: FaceDetector) -> None:
    faces = hog.detect(load("group_t1.jpg"))
    assert len(faces) == 6
    assert all(0 <= f.left < f.right <= 1280 and 0 <= f.top < f.bottom <= 886 for f in faces)


def test_same_person_is_closer_than_different_people(hog: FaceDetector) -> None:
    [obama] = hog.detect(load("obama.jpg"))
    [obama2] = hog.detect(load("obama2.jpg"))
    [biden] = hog.detect(load("biden.jpg"))
    assert float(np.linalg.norm(obama.embedding - obama2.embedding)) < 0.6
    assert float(np.linalg.norm(obama.embedding - biden.embedding)) > 0.6


def test_load_is_idempotent_close_frees_and_detect_reloads() -> None:
    detector = create_detector("hog")
    detector.load()
    detector.load()
    assert detector.loaded
    detector.close()
    assert not detector.loaded
    assert len(detector.detect(load("obama.jpg", 455))) == 1
    assert detector.loaded


def test_detect_rejects_anything_but_rgb_uint8(hog: FaceDetector) -> None:
    with pytest.raises(DetectorError, match="H x W x 3 uint8"):
        hog.detect(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DetectorError, match="uint8"):
        hog.detect(np.zeros((10, 10, 3), dtype=np.float32))


def test_missing_dlib_model_file_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"shape_predictor_5_face_landmarks\.dat"):
        create_detector("hog", model_dir=tmp_path).load()


@pytest.mark.slow
def test_cnn_finds_the_profile_face_hog_misses(hog: FaceDetector, cnn: FaceDetector) -> None:
    pixels = load("cameraman.png")
    assert hog.detect(pixels) == []
    [face] = cnn.detect(pixels)
    assert face.score > 0
    assert face.embedding.shape == (128,)


@pytest.mark.slow
def test_cnn_on_a_half_size_copy_maps_back_to_the_original(cnn: FaceDetector) -> None:
    [face] = cnn.detect(load("obama.jpg", 569))  # 455 x 569: factor 0.5
    original = scale_face(face, 0.5, 910, 1137)
    assert box(original) == pytest.approx(OBAMA_CNN_BOX, abs=25)


@pytest.mark.slow
def test_cnn_out_of_memory_is_reported_as_host_oom() -> None:
    # Under an address-space limit dlib raises MemoryError('std::bad_alloc').
    output = run_python(
        """
        import resource
        import numpy as np
        from facescan_detector.backends import create_detector
        from facescan_detector.errors import DetectorError
        detector = create_detector("cnn", upsample=0)
        detector.load()
        with open("/proc/self/status") as status:
            size = next(int(l.split()[1]) for l in status if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, resource.RLIM_INFINITY))
        try:
            detector.detect(np.full((2400, 2400, 3), 128, np.uint8))
        except DetectorError as exc:
            print(exc.error_type, getattr(exc, "gpu", None), repr(exc.__cause__))
        """
    )
    assert output.split(maxsplit=2) == ["oom", "False", "MemoryError('std::bad_alloc')\n"]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_hog_process_stays_small_and_never_loads_onnxruntime_or_the_cnn(threads: int) -> None:
    output = run_python(
        f"""
        import json, sys
        import numpy as np
        from PIL import Image
        from facescan_detector.backends import create_detector
        from facescan_detector.memory import tune_malloc
        tune_malloc()  # as facescan-detector run does first
        pixels = np.asarray(Image.open({str(SAMPLES / "group_t1.jpg")!r}).convert("RGB"))
        faces = create_detector("hog", threads={threads}).detect(pixels)
        with open("/proc/self/status") as status:  # ru_maxrss would count pytest's too
            peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        print(json.dumps({{
            "faces": len(faces),
            "peak_mb": peak / 1024,
            "onnxruntime": "onnxruntime" in sys.modules,
        }}))
        """
    )
    report = json.loads(output)
    assert report["faces"] == 6
    assert report["onnxruntime"] is False
    assert report["peak_mb"] <= 200, report


def test_scale_face_divides_clips_the_box_and_scales_landmarks() -> None:
    embedding = np.ones(4, dtype=np.float32)
    face = Face(10, 300, 120, -4, 0.8, ((20.0, 30.0), (310.0, 40.0)), embedding)
    mapped = scale_face(face, 0.5, width=500, height=200)
    assert box(mapped) == (20, 500, 200, 0)  # right 600 and bottom 240 clipped, left 0
    assert mapped.landmarks == ((40.0, 60.0), (620.0, 80.0))
    assert mapped.score == 0.8
    assert mapped.embedding is embedding
    assert box(scale_face(face, 2.0, 500, 200)) == (5, 150, 60, 0)
    with pytest.raises(ValueError, match="positive"):
        scale_face(face, 0, 500, 200)


@pytest.mark.parametrize(
    ("error", "on_gpu", "gpu"),
    [
        (MemoryError("std::bad_alloc"), False, False),
        (RuntimeError("std::bad_alloc"), True, False),
        (RuntimeError("Error while calling cudaMalloc(...): out of memory"), False, True),
        (Fail("CUDA failure 2: out of memory ; GPU=0"), False, True),
        (Fail("BFCArena::AllocateRawInternal Failed to allocate memory"), False, False),
        (Fail("BFCArena::AllocateRawInternal Failed to allocate memory"), True, True),
        (RuntimeError("hipMalloc: out of memory"), False, True),
    ],
)
def test_allocation_failures_become_detector_oom(error: Exception, on_gpu: bool, gpu: bool) -> None:
    translated = translate_error(error, model="cnn", on_gpu=on_gpu)
    assert isinstance(translated, DetectorOOM)
    assert translated.error_type == ErrorType.OOM
    assert translated.gpu is gpu


def test_other_backend_errors_are_internal_with_the_message_and_cause() -> None:
    class Broken(FaceDetector):
        model_name = "broken"
        embedding_dim = 1

        def _load(self) -> None:
            pass

        def _detect(self, pixels: Pixels, room_for_next: Callable[[], None]) -> list[Face]:
            raise ValueError("shape mismatch in layer 3")

        def _close(self) -> None:
            pass

    with pytest.raises(DetectorError, match="shape mismatch in layer 3") as caught:
        Broken().detect(np.zeros((4, 4, 3), np.uint8))
    assert type(caught.value) is DetectorError
    assert caught.value.error_type == ErrorType.INTERNAL
    assert isinstance(caught.value.__cause__, ValueError)


def test_providers_prefer_a_gpu_then_fall_back_to_cpu() -> None:
    cpu = "CPUExecutionProvider"
    assert select_providers(available=[cpu]) == [cpu]
    assert select_providers(available=[cpu, "CUDAExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert select_providers(available=[cpu, "ROCMExecutionProvider"]) == [
        "ROCMExecutionProvider",
        cpu,
    ]
    assert select_providers(available=[cpu, "MIGraphXExecutionProvider"])[0].startswith("MIG")
    with pytest.raises(StartupError, match="CUDAExecutionProvider"):
        select_providers(["CUDAExecutionProvider"], available=[cpu])


def test_hardware_description_is_json_and_names_dlib_cuda() -> None:
    info = describe_hardware().as_dict()
    assert json.loads(json.dumps(info)) == info
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert isinstance(info["dlib_cuda"], bool)
