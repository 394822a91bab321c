"""sizing: the memory a detector is given for a batch of one (step, size class)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facescan_operator.sizing import (
    CLASS_MAX_MEGAPIXELS,
    DEFAULT_COSTS,
    MIB,
    CalibrationTable,
    ModelCost,
    memory_bytes,
    working_megapixels,
)

TABLE = CalibrationTable.default()


def test_hog_small_image_at_full_scale_matches_the_model() -> None:
    # 160 base + min(2, 1.6384) MP x 60 + 2 MP x 6 decode = 270.3 MB -> 320 MiB (5 x 64)
    assert memory_bytes(TABLE, "hog", 0, 1280, 1.0) == 320 * MIB


def test_memory_is_a_whole_number_of_64_mib() -> None:
    for model in DEFAULT_COSTS:
        for size_class in CLASS_MAX_MEGAPIXELS:
            for scale in (1.0, 0.5, 0.25):
                assert memory_bytes(TABLE, model, size_class, 1280, scale) % (64 * MIB) == 0


@pytest.mark.parametrize("model", sorted(DEFAULT_COSTS))
def test_memory_grows_with_scale(model: str) -> None:
    sizes = [memory_bytes(TABLE, model, 1, 0, s) for s in (0.25, 0.33, 0.5, 0.75, 1.0)]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1]


@pytest.mark.parametrize("model", sorted(DEFAULT_COSTS))
def test_memory_grows_with_size_class(model: str) -> None:
    sizes = [memory_bytes(TABLE, model, c, 1280, 1.0) for c in (0, 1, 2, 3, 4)]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1]


def test_unknown_size_is_sized_like_a_32_megapixel_photo() -> None:
    for model in DEFAULT_COSTS:
        assert memory_bytes(TABLE, model, 5, 1280, 1.0) == memory_bytes(TABLE, model, 3, 1280, 1.0)


def test_cnn_needs_more_than_hog() -> None:
    for size_class in range(6):
        assert memory_bytes(TABLE, "cnn", size_class, 1280, 1.0) > memory_bytes(
            TABLE, "hog", size_class, 1280, 1.0
        )


def test_max_dimension_caps_the_working_megapixels() -> None:
    assert working_megapixels(4, 1280, 1.0) == pytest.approx(1280 * 1280 / 1e6)
    assert working_megapixels(4, 0, 1.0) == pytest.approx(179)
    assert working_megapixels(0, 4000, 1.0) == pytest.approx(2)  # cap above the class
    assert working_megapixels(4, 1280, 0.5) == pytest.approx(1280 * 1280 / 1e6 / 4)
    capped = memory_bytes(TABLE, "cnn", 4, 1280, 1.0)
    uncapped = memory_bytes(TABLE, "cnn", 4, 0, 1.0)
    assert capped < uncapped


def test_decoding_the_original_is_counted_even_when_the_work_is_capped() -> None:
    # same working megapixels (capped at 1280), larger originals to decode
    assert working_megapixels(2, 1280, 1.0) == working_megapixels(3, 1280, 1.0)
    assert memory_bytes(TABLE, "hog", 3, 1280, 1.0) > memory_bytes(TABLE, "hog", 2, 1280, 1.0)


def test_calibrate_json_overrides_the_defaults_model_by_model() -> None:
    data = {
        "models": {
            "hog": {
                "available": True,
                "base_mb": 1000,
                "mb_per_megapixel": 0,
                "seconds_per_megapixel": 1,
            },
            "cnn": {"available": False, "reason": "no GPU"},
            "insightface": {"available": True},
        }
    }
    table = CalibrationTable.from_calibrate_json(data)
    assert table.cost("hog") == ModelCost(1000.0, 0.0, 1.0)
    assert table.cost("cnn") == DEFAULT_COSTS["cnn"]
    assert table.cost("insightface") == DEFAULT_COSTS["insightface"]
    # 1000 + 0 + 2 MP x 6 = 1012 MB -> 1024 MiB
    assert memory_bytes(table, "hog", 0, 1280, 1.0) == 1024 * MIB


def test_calibration_without_seconds_defaults_them_to_zero() -> None:
    table = CalibrationTable.from_calibrate_json(
        {"models": {"hog": {"base_mb": 10, "mb_per_megapixel": 5}}}
    )
    assert table.cost("hog") == ModelCost(10.0, 5.0, 0.0)


def test_calibration_table_loads_from_a_file_or_defaults(tmp_path: Path) -> None:
    assert CalibrationTable.load(None) == CalibrationTable.default()
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"models": {"cnn": {"base_mb": 1, "mb_per_megapixel": 2}}}))
    assert CalibrationTable.load(path).cost("cnn") == ModelCost(1.0, 2.0, 0.0)


def test_default_table_is_a_copy() -> None:
    table = CalibrationTable.default()
    table.costs["hog"] = ModelCost(1, 1, 1)
    assert CalibrationTable.default().cost("hog") == DEFAULT_COSTS["hog"]


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="no calibration for model 'yolo'"):
        TABLE.cost("yolo")
    with pytest.raises(ValueError, match="yolo"):
        memory_bytes(TABLE, "yolo", 0, 1280, 1.0)


def test_cnn_limits_cover_what_calibrate_measured_at_upsample_1() -> None:
    # `facescan-detector calibrate --models cnn --sizes 320,640` (upsample 1, the
    # detector's default): peak 349 MB at a 320 px long side, 1,158 MB at 640
    assert memory_bytes(TABLE, "cnn", 0, 1280, 0.25) >= 349 * MIB
    assert memory_bytes(TABLE, "cnn", 0, 1280, 0.5) >= 1158 * MIB
