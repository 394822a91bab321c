"""What a /process job's media is, from its first bytes: a job's file is kept under a
name of its own (no client text in paths), so there is no suffix to go by.

Called by ``facescan_api.jobs`` before a job's image is registered. A video container
(ISO base media, i.e. MP4/MOV/M4V; Matroska/WebM; AVI) is registered as a video: the
detector samples its frames (README "Videos"); its frame size and duration come from
its header, read with PyAV (``facescan_detector.video.probe``; no frame decoded).
Everything else is a photo for the detector's loader, which types what it cannot read.
HEIF/HEIC/AVIF photos are ISO base media files too: their ``ftyp`` brand tells them.
"""

from __future__ import annotations

from pathlib import Path

from facescan_queue.models import MediaKind

HEAD_BYTES = 16
"""Bytes read to tell a video (enough for each signature below)."""

IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
    | {b"mif1", b"mif2", b"msf1", b"avif", b"avis", b"avci", b"jpgs", b"jpeg"}
)
"""ftyp major brands of still images (HEIF, HEIC, AVIF): every other ftyp is a movie."""

QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
"""First atoms of an old QuickTime file, which has no ftyp box."""


def kind_of(head: bytes) -> MediaKind:
    """``video`` when ``head`` (a file's first bytes) starts a video container."""
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, WebM
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    box = head[4:8]
    if box == b"ftyp":
        return "image" if head[8:12] in IMAGE_BRANDS else "video"
    if box in QUICKTIME_ATOMS:
        return "video"
    return "image"


def kind_of_file(path: Path) -> MediaKind:
    with path.open("rb") as file:
        return kind_of(file.read(HEAD_BYTES))


def video_facts(path: Path) -> tuple[int | None, int | None, int | None]:
    """A video's frame width, height and duration in ms from its header; None for what
    cannot be read (the detector then records why the video does not decode)."""
    from facescan_detector.errors import DetectorError

    try:
        from facescan_detector.video import probe  # imports PyAV: only once a video is met
    except ImportError:  # no PyAV here: the detector says so when it meets the video
        return None, None, None
    try:
        info = probe(path, name="the job's media")
    except DetectorError:
        return None, None, None
    duration_ms = round(info.duration_s * 1000) if info.duration_s is not None else None
    return info.width, info.height, duration_ms
