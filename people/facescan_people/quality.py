"""How good a clustering is against the truth, and how two clusterings agree: pairwise
and BCubed precision, recall and F (faces without a label, noise, count as singletons:
each a cluster of its own), and the same-photo merges (two faces of one photo in one
cluster). Used by the benchmark and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

# Faces without a label (noise) count as singletons: each is a cluster of its own.


def _codes(labels: Sequence[object]) -> npt.NDArray[np.int64]:
    codes: dict[object, int] = {}
    out = np.empty(len(labels), np.int64)
    for i, label in enumerate(labels):
        key: object = ("noise", i) if label is None else label
        out[i] = codes.setdefault(key, len(codes))
    return out


def _contingency(
    predicted: Sequence[object], truth: Sequence[object]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Cell counts (predicted, true) per occupied cell, with each face's cell index."""
    if len(predicted) != len(truth):
        raise ValueError("one label per face in both clusterings")
    p, t = _codes(predicted), _codes(truth)
    cells, cell_of = np.unique(p * (int(t.max(initial=0)) + 1) + t, return_inverse=True)
    del cells
    return p, t, cell_of.astype(np.int64)


class Scores(NamedTuple):
    precision: float
    recall: float
    f: float


def _f(precision: float, recall: float) -> Scores:
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f)


def pairwise(predicted: Sequence[object], truth: Sequence[object]) -> Scores:
    """Pairwise precision/recall/F over all pairs of faces put together."""
    p, t, cell = _contingency(predicted, truth)

    def pairs(codes: npt.NDArray[np.int64]) -> float:
        counts = np.bincount(codes).astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    both, in_p, in_t = pairs(cell), pairs(p), pairs(t)
    return _f(both / in_p if in_p else 1.0, both / in_t if in_t else 1.0)


def bcubed(predicted: Sequence[object], truth: Sequence[object]) -> Scores:
    """BCubed precision/recall/F (Amigó et al. 2009), averaged over faces."""
    p, t, cell = _contingency(predicted, truth)
    if len(p) == 0:
        return Scores(1.0, 1.0, 1.0)
    together = np.bincount(cell)[cell].astype(np.float64)
    precision = float((together / np.bincount(p)[p]).mean())
    recall = float((together / np.bincount(t)[t]).mean())
    return _f(precision, recall)


def agreement(a: Sequence[object], b: Sequence[object]) -> float:
    """Pairwise F of one clustering against the other (symmetric; 1.0 when identical)."""
    return pairwise(a, b).f


def same_photo_merges(labels: Sequence[object], image_ids: Sequence[int]) -> int:
    """Pairs of faces of one image that share a (non-noise) cluster."""
    seen: dict[tuple[int, object], int] = {}
    merges = 0
    for label, image in zip(labels, image_ids, strict=True):
        if label is not None:
            key = (int(image), label)
            merges += seen.get(key, 0)
            seen[key] = seen.get(key, 0) + 1
    return merges
