"""Finding the images under a directory and reading their size from headers (no decode).

Used by `facescan scan` and `facescan register` to register a library. Width and height
come from the file header (Pillow reads only the header; HEIC through pillow-heif), so
right-sizing knows each image's megapixels before any worker starts. A file whose header
cannot be read is registered anyway, without a size: the detector will record why it
cannot be decoded.

Only regular files are registered, and only from beneath the root: the walk opens each
directory relative to its parent's descriptor with O_NOFOLLOW, so a symbolic link is
never followed, even one swapped in for a directory while the walk runs. Symbolic links
are skipped wherever they point, inside the root too: an image linked from elsewhere in
the library is registered once, under its own path, and one outside is not the
library's. FIFOs, devices and sockets are skipped without being opened (opening a FIFO
blocks until a writer comes; opening a device may act on it), and a file is opened
non-blocking and checked again on its descriptor before its header is read.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

from facescan_queue.models import NewImage

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)

_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY = _NOFOLLOW | os.O_DIRECTORY


def image_files(root: Path) -> Iterator[Path]:
    """Every regular image file under ``root`` (recursively, any case of suffix): a
    directory's files in name order, then its subdirectories in name order. Hidden
    directories, symbolic links and special files (FIFOs, devices, sockets) are skipped."""
    for relative, _, _ in _walk(root):
        yield root / relative


def scan_directory(root: Path) -> list[NewImage]:
    """The images under ``root`` with paths relative to it, each header read from the
    file the walk found (opened relative to its directory, never through a link)."""
    images = []
    for relative, directory, entry in _walk(root):
        try:
            fd = os.open(entry.name, _NOFOLLOW, dir_fd=directory)
        except OSError:  # unreadable (permission): registered, the detector says why
            images.append(NewImage(relative, None, None, entry.stat(follow_symlinks=False).st_size))
            continue
        header = _header(fd, relative)
        if header is not None:  # None: no longer a regular file
            images.append(header)
    return images


def read_header(path: Path) -> NewImage:
    """A NewImage for ``path`` relative to nothing yet: size from the header if readable.
    Anything but a regular file (after links) has no size and is never opened."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NewImage(str(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return NewImage(str(path))
    return _header(fd, str(path)) or NewImage(str(path))


def _walk(root: Path) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    """(path relative to root, descriptor of its directory, its entry) of every regular
    file with an image suffix; the descriptor is open while the entry is looked at."""
    try:  # the root itself may be a link (e.g. /mnt/photos -> /data/photos)
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        yield from _walk_at(top, "")
    finally:
        os.close(top)


def _walk_at(directory: int, prefix: str) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    subdirectories = []
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:  # gone since it was listed
            continue
        if stat.S_ISREG(mode) and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield prefix + entry.name, directory, entry
        elif stat.S_ISDIR(mode) and not entry.name.startswith("."):
            subdirectories.append(entry.name)
    for name in subdirectories:
        try:  # ELOOP if it became a link, ENOTDIR if it became anything else
            fd = os.open(name, _DIRECTORY, dir_fd=directory)
        except OSError:
            continue
        try:
            yield from _walk_at(fd, f"{prefix}{name}/")
        finally:
            os.close(fd)


def _header(fd: int, path: str) -> NewImage | None:
    """The size of the open file ``fd`` from its header (closing it); None if it is not a
    regular file."""
    from PIL import Image

    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None
        _register_heif()
        width = height = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(file) as img:
                    width, height = img.size
        except Exception:
            pass
    return NewImage(path, width or None, height or None, status.st_size)


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
