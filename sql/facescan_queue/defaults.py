"""A library's detection defaults, written once for the CLI, the FaceScan spec and the
detector (the schema's column defaults say the same: tests/integration/queue checks it).

A cascade is the (model, scale) steps an image goes through: an image that runs out of
memory or time at one step is detected again at the next.
"""

from __future__ import annotations

Cascade = tuple[tuple[str, float], ...]

CNN_CASCADE: Cascade = (
    ("cnn", 1.0),
    ("cnn", 0.75),
    ("cnn", 0.5),
    ("cnn", 0.33),
    ("cnn", 0.25),
    ("hog", 1.0),
)
"""dlib's CNN at falling scales, then HOG: every image ends detected, at worst by HOG."""
HOG_CASCADE: Cascade = (("hog", 1.0),)
INSIGHTFACE_CASCADE: Cascade = (("insightface", 1.0), ("insightface", 0.5), ("hog", 1.0))
CASCADES: dict[str, Cascade] = {
    "hog": HOG_CASCADE,
    "cnn": CNN_CASCADE,
    "insightface": INSIGHTFACE_CASCADE,
}
"""The cascade of each model a user picks (`scan --model`, `serve --model`)."""

DEFAULT_CASCADE = CNN_CASCADE
DEFAULT_MAX_DIMENSION = 1280
"""The long side (px) an image is scaled down to before detection; 0: no cap."""
DEFAULT_FRAMES_PER_VIDEO = 5
"""Frames sampled per video, evenly over its duration (at 1/6, 2/6, ... 5/6)."""

RESERVED_PREFIX = ".facescan/"
"""Library paths beneath it are facescan's own images, not files of the library's root
(the reference photos uploaded to POST /people): registration never marks them missing
and rescans leave them alone (there is no file to detect again)."""
