"""Right-sizing: how much memory a detector needs for a batch of one (step, size class).

Used by the planner. A detector's peak memory is modelled as
``base_mb + working_megapixels x mb_per_megapixel`` for its model (the calibration table,
measured by ``facescan-detector calibrate``; defaults measured on a 2-core x86 machine
ship here) plus the decode of the original image, bounded by its size class.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

# Upper bound of original megapixels per size class (facescan.size_class in SQL):
# 0 <= 2 MP, 1 <= 8, 2 <= 16, 3 <= 32, 4 larger (bounded by the decoder's 179 MP bomb
# guard), 5 unknown (sized like 32 MP: an unknown image is usually a camera photo).
CLASS_MAX_MEGAPIXELS: dict[int, float] = {0: 2, 1: 8, 2: 16, 3: 32, 4: 179, 5: 32}

# Decoding the original: RGB(A) at full size before the resize (JPEG decodes smaller
# with draft mode, but PNG/HEIC/TIFF do not). Bytes per original pixel, with headroom.
# Wide images fit too: 16/32-bit samples (2-4 bytes a pixel decoded) become 8-bit gray
# a strip at a time and are resized before RGB (a 12000 px 16-bit PNG: ~3 bytes a pixel;
# tests/unit/detector/test_wide_images.py measures it against this figure).
DECODE_BYTES_PER_PIXEL = 6.0


@dataclass(frozen=True)
class ModelCost:
    """One model's line: peak RSS in MB = base_mb + working megapixels x mb_per_megapixel."""

    base_mb: float
    mb_per_megapixel: float
    seconds_per_megapixel: float


# Measured with `facescan-detector calibrate` on a 2-core x86-64 (AMD EPYC) without a
# GPU: HOG at upsample 1, CNN on CPU, InsightFace (SCRFD 640 + ArcFace) on CPU.
# CNN runs at upsample 1 too (the detector's default), which quadruples the pixels dlib
# works on: calibrate measured 3,809 MB per working megapixel (349 MB at a 320 px long
# side, 1,158 MB at 640), not the ~1,000 of CNN at upsample 0. Sized at 950, every CNN
# step of a 1 MP photo was OOM-killed at its own limit even without --memory-limit.
DEFAULT_COSTS: dict[str, ModelCost] = {
    "hog": ModelCost(base_mb=160, mb_per_megapixel=60, seconds_per_megapixel=0.35),
    "cnn": ModelCost(base_mb=180, mb_per_megapixel=3900, seconds_per_megapixel=7.5),
    "insightface": ModelCost(base_mb=450, mb_per_megapixel=40, seconds_per_megapixel=0.5),
}


@dataclass(frozen=True)
class CalibrationTable:
    """Per-model costs; overrides the defaults model by model."""

    costs: dict[str, ModelCost]

    @classmethod
    def default(cls) -> CalibrationTable:
        return cls(dict(DEFAULT_COSTS))

    @classmethod
    def from_calibrate_json(cls, data: dict[str, Any]) -> CalibrationTable:
        """Reads the JSON `facescan-detector calibrate` prints (unavailable models skipped)."""
        costs = dict(DEFAULT_COSTS)
        for name, entry in data.get("models", {}).items():
            if entry.get("available", True) and "base_mb" in entry:
                costs[name] = ModelCost(
                    base_mb=float(entry["base_mb"]),
                    mb_per_megapixel=float(entry["mb_per_megapixel"]),
                    seconds_per_megapixel=float(entry.get("seconds_per_megapixel", 0.0)),
                )
        return cls(costs)

    @classmethod
    def load(cls, path: Path | None) -> CalibrationTable:
        if path is None:
            return cls.default()
        return cls.from_calibrate_json(json.loads(path.read_text(encoding="utf-8")))

    def cost(self, model: str) -> ModelCost:
        try:
            return self.costs[model]
        except KeyError:
            raise ValueError(f"no calibration for model {model!r}") from None


def working_megapixels(size_class: int, max_dimension: int, scale: float) -> float:
    """Megapixels the model sees: the original capped at max_dimension, times scale²."""
    original = CLASS_MAX_MEGAPIXELS[size_class]
    if max_dimension > 0:
        # the largest area a max_dimension long side allows is a square
        original = min(original, max_dimension * max_dimension / 1e6)
    return original * scale * scale


def memory_bytes(
    table: CalibrationTable, model: str, size_class: int, max_dimension: int, scale: float
) -> int:
    """The memory limit for a detector running (model, scale) on images of a size class,
    rounded up to a whole 64 MiB."""
    cost = table.cost(model)
    work = working_megapixels(size_class, max_dimension, scale)
    decode_mb = CLASS_MAX_MEGAPIXELS[size_class] * DECODE_BYTES_PER_PIXEL
    total_mb = cost.base_mb + work * cost.mb_per_megapixel + decode_mb
    return int(math.ceil(total_mb / 64) * 64 * MIB)
