"""dlib's HOG face detector on two cores, with exactly dlib's result.

Used by :class:`facescan_detector.backends.dlib_backend.DlibDetector` for ``hog`` when
the process may use two or more CPUs. dlib's frontal face detector scans an image
pyramid (each level 5/6 of the one above) with five HOG filters, then keeps the best of
overlapping detections (greedy non-maximum suppression). One call runs on one core; it
releases the GIL. Here the pyramid is cut in two halves of about equal work: the two
largest levels one after the other in one thread, every smaller level (dlib's own
pyramid of the third level) in the other, by copies of dlib's detector whose suppression
is switched off (one also limited to one level), read from and written back in dlib's
serialization format. The raw detections of all levels are mapped to the coordinates
dlib would give them and suppressed here exactly as dlib does (highest score first; a
detection is dropped when it overlaps a kept one by dlib's ``test_box_overlap``:
intersection over the bounding box of both above ``iou``, or covering more than
``covered`` of either).

The result equals ``dlib.get_frontal_face_detector().run(image, upsample, 0)``: same
boxes, same scores, same order (tests/unit/detector/test_hog_split.py compares them on
real photographs). Peak memory is about that of one call: each pyramid level is made
once, and the first thread holds the features of one level at a time. Where a
detection of the small levels cannot be mapped unambiguously, the whole image is
detected by dlib's own call instead.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVELS_IN_FIRST_HALF = 2
"""Pyramid levels 0 and 1 hold about half of the pixels of all levels (1 + 5/6 of 1 /
(1 - 25/36))."""

_RATIO = 6 / 5  # dlib's pyramid_down<6>: each level is 5/6 of the one above

log = logging.getLogger(__name__)


class SplitUnavailable(Exception):
    """The detector file is not laid out as this module reads it (another dlib)."""


@dataclass(frozen=True)
class _Layout:
    """Where the fields this module changes lie in a serialized frontal face detector."""

    cell_size: int
    window: tuple[int, int]  # width, height in pixels
    max_levels: tuple[int, int]  # byte span of max_pyramid_levels
    min_layer: tuple[int, int]  # min_pyramid_layer_width, height
    overlap: tuple[int, int]  # byte span of test_box_overlap (two doubles)
    iou: float
    covered: float


class _Reader:
    """dlib's serialization of integers (a size/sign byte, then little-endian bytes)
    and doubles (mantissa and exponent as two such integers)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def int(self) -> int:
        head = self.data[self.at]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.at + 1 : self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if head & 0x80 else value

    def double(self) -> float:
        mantissa = self.int()
        return math.ldexp(mantissa, self.int())


def _int(value: int) -> bytes:
    size = max(1, (abs(value).bit_length() + 7) // 8)
    return bytes([size | (0x80 if value < 0 else 0)]) + abs(value).to_bytes(size, "little")


_ONE = _int(1) + _int(0)  # the double 1.0 (mantissa 1, exponent 0): overlap never above it


def _layout(data: bytes) -> _Layout:
    """object_detector v2 of scan_fhog_pyramid v1, as dlib writes it (checked with 20.0)."""
    r = _Reader(data)
    if r.int() != 2 or r.int() != 1:  # object_detector and scanner versions
        raise SplitUnavailable("not an object_detector v2 of scan_fhog_pyramid v1")
    r.int(), r.int()  # the (empty) feature pyramid
    cell_size, _padding = r.int(), r.int()
    window = (r.int(), r.int())
    start = r.at
    r.int()
    max_levels = (start, r.at)
    min_layer = (r.int(), r.int())
    r.double()  # nuclear norm regularization strength
    r.int()  # dimensions
    start = r.at
    iou, covered = r.double(), r.double()
    overlap = (start, r.at)
    if cell_size <= 0 or min(window) < cell_size or not (0 < iou <= 1 and 0 < covered <= 1):
        raise SplitUnavailable(f"unexpected detector fields {cell_size}, {window}, {iou}")
    return _Layout(cell_size, window, max_levels, min_layer, overlap, iou, covered)


def _variant(data: bytes, layout: _Layout, max_levels: int | None) -> bytes:
    """The detector with suppression off and, if given, at most ``max_levels`` levels."""
    levels = data[slice(*layout.max_levels)] if max_levels is None else _int(max_levels)
    return (
        data[: layout.max_levels[0]]
        + levels
        + data[layout.max_levels[1] : layout.overlap[0]]
        + _ONE
        + _ONE
        + data[layout.overlap[1] :]
    )


Box = tuple[int, int, int, int]  # left, top, right, bottom, inclusive (dlib's rectangle)


def cache_dir() -> Path:
    """Where facescan keeps what it derives from installed packages (XDG)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facescan"


def load_frontal(dlib: Any) -> tuple[Any, bytes]:
    """dlib's frontal face detector and its serialized bytes.

    ``dlib.get_frontal_face_detector()`` decodes the detector from a compressed string
    dlib carries: 0.3-0.5 s, holding the GIL (the detector's start-up waits on it). Its
    bytes are kept in :func:`cache_dir`, per dlib version, and later processes load
    them in about 2 ms. A cache that cannot be read, loaded or written is rebuilt or
    skipped; the detector is the same either way.
    """
    path = cache_dir() / f"dlib-{dlib.__version__}-frontal_face_detector.svm"
    try:
        data = path.read_bytes()
        _layout(data)  # a foreign or cut file is rebuilt below
        return dlib.fhog_object_detector(str(path)), data
    except (OSError, RuntimeError, SplitUnavailable, IndexError) as exc:
        log.debug("no cached frontal face detector (%s): building it", exc)
    detector = dlib.get_frontal_face_detector()
    with tempfile.TemporaryDirectory(prefix="facescan-hog-") as tmp:
        saved = Path(tmp, "frontal.svm")
        detector.save(str(saved))
        data = saved.read_bytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)  # whole or not at all, whoever writes last
    except OSError as exc:
        log.debug("frontal face detector not cached: %s", exc)
    return detector, data


def _box(rect: Any) -> Box:
    return (rect.left(), rect.top(), rect.right(), rect.bottom())


class SplitHog:
    """``run(pixels, upsample)`` = dlib's frontal face detector's ``run(pixels,
    upsample, 0)``, on two threads. Build it with :meth:`load`."""

    def __init__(self, dlib: Any, detector: Any, data: bytes, layout: _Layout) -> None:
        self._dlib = dlib
        self.whole = detector
        """dlib's own frontal face detector, whose result this one reproduces."""
        self._layout = layout
        with tempfile.TemporaryDirectory(prefix="facescan-hog-") as tmp:
            one, rest = Path(tmp, "one.svm"), Path(tmp, "rest.svm")
            one.write_bytes(_variant(data, layout, 1))
            rest.write_bytes(_variant(data, layout, None))
            self._one = dlib.fhog_object_detector(str(one))  # ~2 ms each, unlike
            self._rest = dlib.fhog_object_detector(str(rest))  # get_frontal_face_detector
        self._up = dlib.pyramid_down(2)
        self._down = dlib.pyramid_down(6)
        cells = layout.window[0] // layout.cell_size, layout.window[1] // layout.cell_size
        # a detection window in the pixels of its level: (cells - 1) x cell + 1, one cell
        # more where it straddles the image's top or left edge (dlib's fhog_to_image)
        self._sizes = tuple(
            {(n - 1) * layout.cell_size + 1, n * layout.cell_size + 1} for n in cells
        )
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hog")
        self.fallbacks = 0
        """Images detected by dlib's own call because a box could not be mapped."""

    @classmethod
    def load(cls) -> SplitHog:
        """Raises SplitUnavailable when this dlib writes its detector differently."""
        import dlib

        detector, data = load_frontal(dlib)
        return cls(dlib, detector, data, _layout(data))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run(
        self, pixels: Any, upsample: int, level_0_done: Callable[[], None] | None = None
    ) -> list[tuple[Any, float]]:
        """(dlib.rectangle, score) of each face, best first, as dlib's own call.

        ``level_0_done`` is called from the pool's thread once the largest level is
        scanned (and, when upsampled, freed): the peak of memory is past."""
        dlib = self._dlib
        up = pixels
        for _ in range(upsample):  # dlib's pyramid_up: bilinear, to rect_up's size
            grown = self._up.rect_up(dlib.rectangle(0, 0, up.shape[1] - 1, up.shape[0] - 1))
            up = dlib.resize_image(up, grown.bottom() + 1, grown.right() + 1)
        levels = self._levels(dlib.rectangle(0, 0, up.shape[1] - 1, up.shape[0] - 1))
        # levels 0 and 1, one after the other, in the pool's thread (one level's features
        # held at a time); level 1 is made here, once, and level 2 from it
        first = [self._pool.submit(self._one.run, up, 0, 0.0)]
        if level_0_done is not None:
            first[0].add_done_callback(lambda _: level_0_done())
        found: list[tuple[float, Box]] | None = []
        try:
            if levels > 1:
                level = self._down(up)
                del up  # the pool's alone now: freed once scanned
                first.append(self._pool.submit(self._one.run, level, 0, 0.0))
                if levels > LEVELS_IN_FIRST_HALF:
                    found = self._rest_of(self._down(level))
                del level
        finally:
            done = [future.result() for future in first]
        if found is None:
            self.fallbacks += 1
            rects, scores, _ = self.whole.run(pixels, upsample, 0.0)
            return list(zip(rects, scores, strict=True))
        for index, (rects, scores, _) in enumerate(done):
            found += [
                (float(score), _box(self._down.rect_up(rect, index)))
                for rect, score in zip(rects, scores, strict=True)
            ]
        kept = self._suppress(found)
        return [(self._up.rect_down(dlib.rectangle(*box), upsample), s) for s, box in kept]

    def _levels(self, rect: Any) -> int:
        """How many levels dlib's scanner makes of an image of ``rect`` (its loop)."""
        min_w, min_h = self._layout.min_layer
        levels = 0
        while True:
            rect = self._down.rect_down(rect)
            levels += 1
            if rect.width() < min_w or rect.height() < min_h:
                return levels

    def _rest_of(self, level: Any) -> list[tuple[float, Box]] | None:
        """Raw detections of ``level`` (level 2) and below, in level-0 pixels; None if
        one cannot be mapped."""
        rects, scores, _ = self._rest.run(level, 0, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = self._lift(rect)
            if box is None:
                return None
            found.append((float(score), box))
        return found

    def _lift(self, rect: Any) -> Box | None:
        """A detection of levels 2 and below in the coordinates dlib gives it.

        dlib maps a window found at level ``l`` to level 0 by rect_up(window, l), one
        rounding after composing the levels' affine maps. The detector of these levels
        rounded at its own level 0 (level 2 of the whole), so its window is recovered
        first: the one level ``j`` whose inverse map gives a window of the detector's
        size that maps back to exactly this rectangle; then it is mapped all the way up.
        """
        dlib, down = self._dlib, self._down
        found = None
        for j in range(64):
            corners = []
            for x, y in ((rect.left(), rect.top()), (rect.right(), rect.bottom())):
                for _ in range(j):
                    x, y = (x - 0.3) / _RATIO, (y - 0.3) / _RATIO
                corners += [math.floor(x + 0.5), math.floor(y + 0.5)]
            window = dlib.rectangle(*corners)
            if window.width() < min(self._sizes[0]) - 1:
                break  # smaller at every further level
            if (
                window.width() in self._sizes[0]
                and window.height() in self._sizes[1]
                and _box(down.rect_up(window, j)) == _box(rect)
            ):
                if found is not None:
                    return None  # ambiguous
                found = _box(down.rect_up(window, j + LEVELS_IN_FIRST_HALF))
        return found

    def _suppress(self, found: list[tuple[float, Box]]) -> list[tuple[float, Box]]:
        """dlib's greedy non-maximum suppression over all raw detections."""
        kept: list[tuple[float, Box]] = []
        for score, box in sorted(found, key=lambda item: -item[0]):
            if not any(self._overlap(box, other) for _, other in kept):
                kept.append((score, box))
        return kept

    def _overlap(self, a: Box, b: Box) -> bool:
        """dlib's test_box_overlap; areas count pixels (right - left + 1)."""
        left, top = max(a[0], b[0]), max(a[1], b[1])
        right, bottom = min(a[2], b[2]), min(a[3], b[3])
        if right < left or bottom < top:
            return False
        inner = (right - left + 1) * (bottom - top + 1)
        outer = (max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1)
        area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return (
            inner / outer > self._layout.iou
            or inner / area_a > self._layout.covered
            or inner / area_b > self._layout.covered
        )
