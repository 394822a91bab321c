"""Small SCRFD- and ArcFace-shaped ONNX models, built here with the ``onnx`` helper API.

InsightFace's weights cannot be downloaded in tests. These models have insightface's
input and output layout, and outputs the tests choose (a detector that "sees" faces at
given anchors whatever the image, a recognizer that is a fixed linear map of the crop),
so decoding, letterboxing, alignment and wiring are checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SCRFD_SIDE = 640
STRIDES = (8, 16, 32)
ANCHORS_PER_LOCATION = 2
POOL = 8  # the test recognizer averages 8x8 blocks of the 112x112 crop: 3x14x14 -> 512
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class FakeFace:
    """A face the test detector reports at one anchor, in stride units like SCRFD."""

    stride: int
    row: int
    col: int
    anchor: int
    score: float
    distances: tuple[float, float, float, float]  # left, top, right, bottom
    keypoints: tuple[tuple[float, float], ...]  # (dx, dy) from the anchor centre

    @property
    def index(self) -> int:
        return (
            self.row * (SCRFD_SIDE // self.stride) + self.col
        ) * ANCHORS_PER_LOCATION + self.anchor

    @property
    def canvas_box(self) -> tuple[float, float, float, float]:
        """x1, y1, x2, y2 in the 640x640 letterboxed input."""
        cx, cy = self.col * self.stride, self.row * self.stride
        left, top, right, bottom = (d * self.stride for d in self.distances)
        return cx - left, cy - top, cx + right, cy + bottom

    @property
    def canvas_points(self) -> list[tuple[float, float]]:
        cx, cy = self.col * self.stride, self.row * self.stride
        return [(cx + dx * self.stride, cy + dy * self.stride) for dx, dy in self.keypoints]


POINTS = ((-2.0, -1.0), (2.0, -1.0), (0.0, 1.0), (-1.5, 3.0), (1.5, 3.0))
FACE_A = FakeFace(8, 20, 30, 0, 0.9, (5, 6, 5, 7), POINTS)
FACE_A_DUPLICATE = FakeFace(8, 20, 30, 1, 0.8, (5, 6, 5, 6.5), POINTS)
FACE_B = FakeFace(32, 5, 12, 1, 0.7, (2, 2.5, 2, 2.5), tuple((x / 4, y / 4) for x, y in POINTS))
FACE_WEAK = FakeFace(16, 30, 10, 0, 0.49, (3, 3, 3, 3), POINTS)
DEFAULT_FACES = (FACE_A, FACE_A_DUPLICATE, FACE_B, FACE_WEAK)


def _finish(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def scrfd_model(
    faces: tuple[FakeFace, ...] = DEFAULT_FACES,
    *,
    batched: bool = False,
    keypoints: bool = True,
    huge_allocation: bool = False,
) -> onnx.ModelProto:
    """A 1x3x640x640 -> scores/boxes[/keypoints] per stride model reporting ``faces``.

    Every output is a constant plus 0 x mean(input), so the graph uses its input.
    ``huge_allocation`` makes it ask for a 640 GB tensor first (a real onnxruntime
    allocation failure).
    """
    inits = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    if huge_allocation:
        inits.append(numpy_helper.from_array(np.array([400_000, 400_000], np.int64), "huge"))
        nodes += [
            helper.make_node("Expand", ["nothing", "huge"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0),
            helper.make_node("Mul", ["big_sum", "zero"], ["bias"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["nothing"], ["bias"]))
    outputs = []
    widths = (1, 4, 10) if keypoints else (1, 4)
    for kind, width in enumerate(widths):
        for stride in STRIDES:
            count = (SCRFD_SIDE // stride) ** 2 * ANCHORS_PER_LOCATION
            values = np.zeros((count, width), dtype=np.float32)
            for face in faces:
                if face.stride == stride:
                    flat_points = [v for point in face.keypoints for v in point]
                    values[face.index] = ((face.score,), face.distances, flat_points)[kind]
            shape = (1, count, width) if batched else (count, width)
            name = f"out_{kind}_{stride}"
            inits.append(numpy_helper.from_array(values.reshape(shape), f"const_{name}"))
            nodes.append(helper.make_node("Add", [f"const_{name}", "bias"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    return _finish(nodes, [image], outputs, inits)


def arcface_weights(dim: int = 512) -> np.ndarray:
    side = 112 // POOL
    return np.random.default_rng(7).standard_normal((3 * side * side, dim)).astype(np.float32)


def arcface_model(weights: np.ndarray, *, side: int = 112) -> onnx.ModelProto:
    """1x3xSxS -> 1xD: 8x8 average pooling, flatten, times ``weights``."""
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, side, side])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", weights.shape[1]])
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["683"]),
    ]
    return _finish(nodes, [image], [out], [numpy_helper.from_array(weights, "weights")])


def arcface_reference(crop_blob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """What the test recognizer computes, in numpy."""
    side = crop_blob.shape[2] // POOL
    pooled = crop_blob.reshape(1, 3, side, POOL, side, POOL).mean(axis=(3, 5))
    embedding: np.ndarray = (pooled.reshape(1, -1) @ weights).reshape(-1)
    return embedding


def write_models(directory: Path, **models: onnx.ModelProto) -> Path:
    """Save each model as ``<name>.onnx`` in ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        onnx.save(model, str(directory / f"{name}.onnx"))
    return directory


@pytest.fixture(scope="session")
def insightface_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A buffalo_l-like directory: det_10g.onnx (SCRFD-shaped) + w600k_r50.onnx (ArcFace)."""
    directory = tmp_path_factory.mktemp("buffalo_test")
    return write_models(
        directory, det_10g=scrfd_model(), w600k_r50=arcface_model(arcface_weights())
    )
