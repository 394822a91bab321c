"""calibrate(): per-model memory and time figures, measured in fresh processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facescan_detector.calibrate import calibrate

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@pytest.mark.slow
def test_hog_calibration_gives_positive_json_serialisable_figures() -> None:
    result = calibrate(["hog"], sizes=(320, 640), image=SAMPLES / "group_t1.jpg")
    assert json.loads(json.dumps(result)) == result
    hog = result["models"]["hog"]
    assert hog["available"] is True
    assert hog["base_mb"] > 0
    assert hog["mb_per_megapixel"] > 0
    assert hog["seconds_per_megapixel"] > 0
    assert [run["size"] for run in hog["runs"]] == [320, 640]
    assert hog["runs"][1]["faces"] == 6
    for run in hog["runs"]:  # the fitted line covers every measurement
        predicted = hog["base_mb"] + run["megapixels"] * hog["mb_per_megapixel"]
        assert predicted >= run["peak_mb"] - 0.2
    assert "CPUExecutionProvider" in result["machine"]["onnxruntime_providers"]


@pytest.mark.slow
def test_models_that_cannot_start_are_skipped_with_the_reason(tmp_path: Path) -> None:
    result = calibrate(["insightface"], sizes=(64,), model_dir=tmp_path / "buffalo_l")
    skipped = result["models"]["insightface"]
    assert skipped["available"] is False
    assert "buffalo_l does not exist" in skipped["reason"]


@pytest.mark.slow
def test_insightface_is_calibrated_from_its_model_directory(insightface_dir: Path) -> None:
    result = calibrate(["insightface"], sizes=(128, 256), model_dir=insightface_dir)
    figures = result["models"]["insightface"]
    assert figures["available"] is True
    assert figures["base_mb"] > 0
    assert figures["runs"][0]["faces"] == 2
