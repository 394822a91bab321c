"""`facescan scan --model cnn` under a memory limit the first cascade step cannot fit:
real kernel OOM kills (cgroup v1), each charged `oom` to the image, which steps down the
cascade until it fits and is done, marked degraded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.local.support import copy_samples, duplicated_faces, facescan, fetch, last_json


@pytest.mark.slow
def test_an_image_too_large_for_the_limit_steps_down_until_done(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["group_t1.jpg"])

    result = facescan(
        "scan",
        library,
        "--model",
        "cnn",
        "--memory-limit",
        "700M",
        "--workers",
        "1",
        "--json",
        dsn=dsn,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["images"], summary["done"], summary["degraded"]) == (1, 1, 1)
    assert (summary["retrying"], summary["dead"], summary["by_error_type"]) == (0, 0, {})
    assert summary["memory_enforcement"].startswith("cgroup v1")
    assert "killed for memory" in result.stderr

    attempts = fetch(
        dsn,
        "SELECT step, model, scale, outcome, error_type, error FROM facescan.attempts ORDER BY id",
    )
    *ooms, last = attempts
    assert ooms, "the first step must not fit in 700M"
    assert [a["step"] for a in ooms] == list(range(len(ooms)))  # one step down per OOM
    assert all(a["outcome"] == "failed" and a["error_type"] == "oom" for a in ooms)
    assert all("killed for memory" in a["error"] for a in ooms)
    assert (ooms[0]["model"], ooms[0]["scale"]) == ("cnn", 1.0)
    assert (last["outcome"], last["error_type"], last["step"]) == ("done", None, len(ooms))

    image = fetch(dsn, "SELECT state, step, attempts, degraded FROM facescan.images")[0]
    assert (image["state"], image["step"], image["degraded"]) == ("done", len(ooms), True)
    assert image["attempts"] == 0  # stepping down is not charged
    detection = fetch(
        dsn, "SELECT model, scale, step, degraded, face_count FROM facescan.detections"
    )
    assert len(detection) == 1
    assert (detection[0]["model"], detection[0]["scale"]) == (last["model"], last["scale"])
    assert detection[0]["step"] == len(ooms)
    assert detection[0]["degraded"] is True
    assert detection[0]["face_count"] == summary["faces"] > 0
    assert fetch(dsn, "SELECT * FROM facescan.failures") == []
    assert duplicated_faces(dsn) == []
