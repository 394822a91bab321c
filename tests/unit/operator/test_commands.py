"""commands.parse_size: --memory-limit values."""

from __future__ import annotations

import pytest

from facescan_operator.commands import CASCADES, Model, parse_size


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


def test_every_model_has_a_cascade_ending_in_a_model_that_always_fits() -> None:
    for model in Model:
        cascade = CASCADES[model]
        assert cascade[0][0] == model.value
        assert cascade[-1] == ("hog", 1.0)
        assert all(0 < scale <= 1 for _, scale in cascade)
