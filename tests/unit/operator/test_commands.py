"""commands: --memory-limit and --max-dimension values, and the text a person reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from facescan_operator.commands import (
    CASCADES,
    MIN_MAX_DIMENSION,
    Model,
    check_max_dimension,
    check_memory_limit,
    parse_size,
    plural,
    status_line,
)
from facescan_operator.inspection import failures_text
from facescan_queue.models import QueueStatus


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        ("100", 100),
        ("100B", 100),
        ("64k", 64 * 2**10),
        ("1T", 2**40),
        (" 700 MiB ", 700 * 2**20),
        ("2gb", 2 * 2**30),
    ],
)
def test_memory_sizes_are_parsed_in_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "G", "-1G", "2X", "1.2.3M", "2 G B"])
def test_what_is_not_a_size_is_refused_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size(text)


@pytest.mark.parametrize("value", [0, MIN_MAX_DIMENSION, 1280, 100_000])
def test_max_dimensions_a_detector_can_use_are_accepted(value: int) -> None:
    assert check_max_dimension(value) == value


@pytest.mark.parametrize("value", [1, 5, MIN_MAX_DIMENSION - 1])
def test_max_dimensions_too_small_for_any_face_are_refused_with_the_limit(value: int) -> None:
    with pytest.raises(ValueError, match=f"0 \\(no cap\\) or at least {MIN_MAX_DIMENSION}"):
        check_max_dimension(value)


@pytest.mark.parametrize("model", list(Model))
@pytest.mark.parametrize("text", ["0", "1", "1M", "10M", "40M", "159M"])
def test_memory_limits_a_detector_cannot_start_in_are_refused(model: Model, text: str) -> None:
    with pytest.raises(ValueError, match="give at least 160M"):
        check_memory_limit(text, model)


def test_a_memory_limit_a_detector_starts_in_is_accepted() -> None:
    assert check_memory_limit("160M", Model.HOG) == 160 * 2**20
    assert check_memory_limit("2G", Model.CNN) == 2 * 2**30


def test_counts_read_in_the_singular_and_plural() -> None:
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    one = QueueStatus(images=1, done=1, faces=1)
    assert status_line(one) == (
        "1 image: 1 done (1 face, 0 degraded), 0 in progress, 0 pending (0 retrying), 0 dead"
    )


def test_the_summary_counts_what_another_scan_holds_and_pending_includes_retrying() -> None:
    held = QueueStatus(images=40, pending=3, leased=16, done=21, retrying=2, faces=30)
    assert status_line(held) == (
        "40 images: 21 done (30 faces, 0 degraded), 16 in progress, 3 pending (2 retrying), 0 dead"
    )


def test_failure_rows_show_attempts_in_words_and_the_retry_in_local_time() -> None:
    when = datetime(2026, 12, 3, 11, 10, 16, 334000, tzinfo=UTC)
    row = {
        "path": "/p/a.jpg",
        "error_type": "decode",
        "attempts": 1,
        "last_error": "bad",
        "next_retry_at": when.isoformat(),
        "dead": False,
    }
    local = when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert failures_text([row]) == f"/p/a.jpg\tdecode\t1 attempt\tretry at {local}\tbad"
    assert failures_text([{**row, "attempts": 5, "dead": True}]).split("\t")[2:4] == [
        "5 attempts",
        "dead",
    ]


def test_every_model_has_a_cascade_ending_in_a_model_that_always_fits() -> None:
    for model in Model:
        cascade = CASCADES[model]
        assert cascade[0][0] == model.value
        assert cascade[-1] == ("hog", 1.0)
        assert all(0 < scale <= 1 for _, scale in cascade)
