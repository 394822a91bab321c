"""InsightFace detection: SCRFD boxes + 5 landmarks, ArcFace 512-d embeddings, via onnxruntime.

Created by :func:`facescan_detector.backends.create_detector` for ``insightface``. It
reproduces insightface 2.1's ``SCRFD.detect`` (640x640 letterbox, anchors per stride,
distance2bbox/distance2kps, score 0.5, NMS 0.4) and ``ArcFaceONNX.get`` (5-point
similarity alignment to the arcface template, 112x112 crop) with numpy only: no cv2,
skimage or insightface package. Images arrive RGB, which is what insightface's networks
see (it feeds BGR through ``blobFromImage(swapRB=True)``). Embeddings are stored
L2-normalised (insightface's ``normed_embedding``; its raw ``embedding`` is not kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from facescan_detector.backends.base import Face, FaceDetector, Pixels, freeze, translate_error
from facescan_detector.backends.hardware import is_gpu_provider, select_providers
from facescan_detector.errors import DetectorOOM, StartupError

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
"""insightface's ``arcface_dst``: where the 5 landmarks go in a 112x112 crop."""

SCRFD_LAYOUTS = {9: ((8, 16, 32), 2), 15: ((8, 16, 32, 64, 128), 1)}
"""SCRFD output count with keypoints -> (strides, anchors per location)."""

EXPECTED_FILES = (
    "an SCRFD detector and an ArcFace recognizer (buffalo_l: det_10g.onnx, w600k_r50.onnx)"
)


@dataclass(frozen=True)
class InsightFaceOptions:
    """insightface's defaults (``FaceAnalysis`` with ``det_size=(640, 640)``)."""

    input_size: int = 640
    """SCRFD input side, used when the model's input size is dynamic."""
    score_threshold: float = 0.5
    nms_threshold: float = 0.4
    detector_mean: float = 127.5
    detector_std: float = 128.0
    recognizer_mean: float = 127.5
    recognizer_std: float = 127.5
    crop_size: int = 112


def warp_affine(image: Pixels, inverse: Floats, width: int, height: int) -> Pixels:
    """Bilinear resampling like ``cv2.warpAffine`` (pixel centres on integers, border 0).

    ``inverse`` (2x3) maps output (x, y) to source (x, y).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    rows, cols = image.shape[:2]

    def tap(x: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> Floats:
        inside = ((x >= 0) & (x < cols) & (y >= 0) & (y < rows))[..., None]
        values = image[np.clip(y, 0, rows - 1), np.clip(x, 0, cols - 1)].astype(np.float64)
        return np.where(inside, values, 0.0)

    top = tap(x0, y0) * (1 - fx) + tap(x0 + 1, y0) * fx
    bottom = tap(x0, y0 + 1) * (1 - fx) + tap(x0 + 1, y0 + 1) * fx
    warped: Pixels = np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
    return warped


def similarity_transform(src: Floats, dst: Floats) -> Floats:
    """The 2x3 similarity (rotation, uniform scale, translation) taking ``src`` to ``dst``
    in the least-squares sense (Umeyama 1991, as skimage's ``SimilarityTransform``)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = float((src_c**2).sum(axis=1).mean())
    if variance == 0.0:
        raise ValueError("degenerate landmarks: all points coincide")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(s @ d) / variance
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def invert_affine(matrix: Floats) -> Floats:
    """The inverse of a 2x3 affine map."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2:])])


def align_face(image: Pixels, landmarks: Floats, size: int = 112) -> Pixels:
    """insightface's ``norm_crop``: the face warped onto the arcface template, size x size."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    matrix = similarity_transform(landmarks.astype(np.float64), template)
    return warp_affine(image, invert_affine(matrix), size, size)


def letterbox(image: Pixels, width: int, height: int) -> tuple[Pixels, float]:
    """Resize keeping the aspect ratio into the top-left of a black width x height canvas,
    as SCRFD ``detect`` does; returns the canvas and the scale (canvas px per image px)."""
    rows, cols = image.shape[:2]
    if rows / cols > height / width:
        new_h, new_w = height, max(1, int(height / (rows / cols)))
    else:
        new_w, new_h = width, max(1, int(width * (rows / cols)))
    scale = new_h / rows
    # cv2.resize INTER_LINEAR: source = (dest + 0.5) * ratio - 0.5 on each axis.
    ratio_x, ratio_y = cols / new_w, rows / new_h
    inverse = np.array([[ratio_x, 0, 0.5 * ratio_x - 0.5], [0, ratio_y, 0.5 * ratio_y - 0.5]])
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = warp_affine(image, inverse, new_w, new_h)
    return canvas, scale


def to_blob(image: Pixels, mean: float, std: float) -> npt.NDArray[np.float32]:
    """HWC uint8 RGB -> 1xCxHxW float32, (x - mean) / std."""
    blob = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def anchor_centers(rows: int, cols: int, stride: int, anchors: int) -> Floats:
    """(x, y) of every anchor of one stride, each location repeated ``anchors`` times."""
    xs, ys = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    grid = np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride
    return np.repeat(grid, anchors, axis=0)


def nms(boxes: Floats, scores: Floats, threshold: float) -> list[int]:
    """Greedy non-maximum suppression, insightface's variant (areas with +1)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


def decode_scrfd(
    outputs: Sequence[npt.NDArray[Any]],
    *,
    width: int,
    height: int,
    threshold: float,
) -> tuple[Floats, Floats, Floats]:
    """SCRFD outputs (scores, boxes, keypoints per stride) -> candidates above threshold:
    boxes (N, 4) as x1, y1, x2, y2, scores (N,), keypoints (N, 5, 2), input pixels."""
    strides, anchors = SCRFD_LAYOUTS[len(outputs)]
    count = len(strides)
    all_boxes, all_scores, all_kps = [], [], []
    for index, stride in enumerate(strides):
        scores = np.asarray(outputs[index], dtype=np.float64).reshape(-1)
        distances = np.asarray(outputs[index + count], dtype=np.float64).reshape(-1, 4) * stride
        offsets = np.asarray(outputs[index + 2 * count], dtype=np.float64).reshape(-1, 10) * stride
        centers = anchor_centers(height // stride, width // stride, stride, anchors)
        keep = scores >= threshold
        c, d = centers[keep], distances[keep]
        all_boxes.append(np.hstack([c - d[:, :2], c + d[:, 2:]]))
        all_scores.append(scores[keep])
        all_kps.append(c[:, None, :] + offsets[keep].reshape(-1, 5, 2))
    return np.vstack(all_boxes), np.concatenate(all_scores), np.vstack(all_kps)


def _role(session: Any, options: InsightFaceOptions) -> tuple[str | None, str]:
    """``detector``/``recognizer``/None for an opened model, with the reason."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 4 or shape[1] != 3:
        return None, f"input is not 1x3xHxW ({[list(i.shape) for i in inputs]})"
    if len(outputs) in SCRFD_LAYOUTS:
        return "detector", "SCRFD"
    if len(outputs) in (6, 10):
        return None, "SCRFD without keypoints (cannot align faces for ArcFace)"
    side = options.crop_size
    dim = outputs[0].shape[-1] if len(outputs) == 1 else None
    if shape[2] == shape[3] == side and isinstance(dim, int):
        return "recognizer", "ArcFace"
    return None, f"neither SCRFD (9 or 15 outputs) nor ArcFace ({side}x{side} -> 1 output)"


class InsightFaceDetector(FaceDetector):
    """SCRFD + ArcFace from a directory of ONNX models (any names; roles found by shape)."""

    model_name = "insightface"

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] | None = None,
        options: InsightFaceOptions | None = None,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.embedding_dim = 512
        self.options = options or InsightFaceOptions()
        self._requested = list(providers) if providers else None
        self._sessions: dict[str, Any] = {}
        self._on_gpu = False

    @property
    def on_gpu(self) -> bool:
        """Whether the sessions run on a GPU provider."""
        return self._on_gpu

    def _candidates(self) -> list[Path]:
        expected = f"expected {EXPECTED_FILES} as *.onnx files"
        if not self.model_dir.is_dir():
            raise StartupError(
                f"InsightFace model directory {self.model_dir} does not exist; {expected}"
            )
        files = sorted(self.model_dir.glob("*.onnx"))
        if not files:
            raise StartupError(f"InsightFace model directory {self.model_dir} is empty; {expected}")
        known = ("det_", "scrfd", "w600k", "glint", "arcface")  # tried first: fewer sessions
        return sorted(files, key=lambda path: (not path.name.lower().startswith(known), path.name))

    def _load(self) -> None:
        import onnxruntime

        files = self._candidates()
        providers = select_providers(self._requested)
        session_options = onnxruntime.SessionOptions()
        session_options.log_severity_level = 3
        rejected: list[str] = []
        for path in files:
            try:
                session = onnxruntime.InferenceSession(
                    str(path), sess_options=session_options, providers=providers
                )
            except Exception as exc:
                on_gpu = is_gpu_provider(providers[0])
                error = translate_error(exc, model=self.model_name, on_gpu=on_gpu)
                if isinstance(error, DetectorOOM):
                    raise error from exc
                rejected.append(f"{path.name}: unreadable ({exc})")
                continue
            role, reason = _role(session, self.options)
            if role is None or role in self._sessions:
                rejected.append(f"{path.name}: {reason if role is None else 'second ' + role}")
                continue
            self._sessions[role] = session
            log.info("InsightFace %s: %s (%s)", role, path, reason)
            if len(self._sessions) == 2:
                break
        missing = {"detector", "recognizer"} - self._sessions.keys()
        if missing:
            self._sessions.clear()
            raise StartupError(
                f"InsightFace model directory {self.model_dir} has no usable "
                f"{' or '.join(sorted(missing))}; expected {EXPECTED_FILES}; "
                f"found: {'; '.join(rejected) or 'nothing else'}"
            )
        active = self._sessions["detector"].get_providers()
        if active[0] != providers[0]:
            log.warning("onnxruntime fell back to %s (asked for %s)", active, providers)
        self._on_gpu = is_gpu_provider(active[0])
        self.embedding_dim = int(self._sessions["recognizer"].get_outputs()[0].shape[-1])

    def _input_size(self) -> tuple[int, int]:
        shape = self._sessions["detector"].get_inputs()[0].shape
        fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
        side = self.options.input_size
        return (int(shape[3]), int(shape[2])) if fixed else (side, side)

    def _find(self, pixels: Pixels) -> tuple[Floats, Floats, Floats]:
        """SCRFD: boxes (x1, y1, x2, y2), scores and keypoints in ``pixels`` coordinates."""
        opts, session = self.options, self._sessions["detector"]
        width, height = self._input_size()
        canvas, scale = letterbox(pixels, width, height)
        blob = to_blob(canvas, opts.detector_mean, opts.detector_std)
        outputs = session.run(None, {session.get_inputs()[0].name: blob})
        boxes, scores, kps = decode_scrfd(
            outputs, width=width, height=height, threshold=opts.score_threshold
        )
        keep = nms(boxes, scores, opts.nms_threshold)
        return boxes[keep] / scale, scores[keep], kps[keep] / scale

    def _embed(self, pixels: Pixels, landmarks: Floats) -> npt.NDArray[np.float32]:
        """ArcFace on the aligned crop, L2-normalised."""
        opts, session = self.options, self._sessions["recognizer"]
        crop = align_face(pixels, landmarks, opts.crop_size)
        blob = to_blob(crop, opts.recognizer_mean, opts.recognizer_std)
        raw = np.asarray(session.run(None, {session.get_inputs()[0].name: blob})[0]).reshape(-1)
        norm = float(np.linalg.norm(raw))
        return freeze(raw / norm if norm > 0 else raw)

    def _detect(self, pixels: Pixels, room_for_next: Callable[[], None]) -> list[Face]:
        room_for_next()  # one onnxruntime session at a time, decoding fits beside it
        rows, cols = pixels.shape[:2]
        boxes, scores, kps = self._find(pixels)
        faces = []
        for (x1, y1, x2, y2), score, points in zip(boxes, scores, kps, strict=True):
            faces.append(
                Face(
                    top=float(np.clip(y1, 0, rows)),
                    right=float(np.clip(x2, 0, cols)),
                    bottom=float(np.clip(y2, 0, rows)),
                    left=float(np.clip(x1, 0, cols)),
                    score=float(score),
                    landmarks=tuple((float(x), float(y)) for x, y in points),
                    embedding=self._embed(pixels, points),
                )
            )
        return faces

    def _close(self) -> None:
        self._sessions.clear()
        self._on_gpu = False
