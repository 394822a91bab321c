"""Finding the images under a directory and reading their size from headers (no decode).

Used by `facescan scan` to register a library. Width and height come from the file
header (Pillow reads only the header; HEIC through pillow-heif), so right-sizing knows
each image's megapixels before any worker starts. A file whose header cannot be read is
registered anyway, without a size: the detector will record why it cannot be decoded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from facescan_queue.models import NewImage

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)


def image_files(root: Path) -> Iterator[Path]:
    """Every image file under ``root`` (recursively, any case of suffix), in path order.
    Hidden directories are skipped; symlinks are listed, not followed."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(directory) / name


def read_header(path: Path) -> NewImage:
    """A NewImage for ``path`` relative to nothing yet: size from the header if readable."""
    from PIL import Image

    _register_heif()
    width = height = None
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
    except Exception:
        pass
    return NewImage(str(path), width or None, height or None, size)


def scan_directory(root: Path) -> list[NewImage]:
    """The images under ``root`` with paths relative to it."""
    images = []
    for path in image_files(root):
        header = read_header(path)
        images.append(
            NewImage(str(path.relative_to(root)), header.width, header.height, header.file_bytes)
        )
    return images


_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:
            pass
        _heif_registered = True
