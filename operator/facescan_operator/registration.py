"""Finding the images under a directory, reading their size from headers (no decode),
and registering them: what `facescan scan` and `facescan register` (the operator's
register Job) do to a library root.

Width and height come from the file header (Pillow reads only the header; HEIC through
pillow-heif; a video's frame size and duration from its container header, see
video_header), so right-sizing knows each image's megapixels before any worker starts. A
file whose header cannot be read is registered anyway, without a size: the detector will
record why it cannot be decoded. Each file's size and modification time tell the queue
when a registered file changed (it is then detected again).

A walk that read every directory is *complete*; only then may a registration mark the
registered images it did not find missing, and only those whose path is really gone
(an image registered by another way, e.g. import-legacy, under a path the walk skips is
not missing). A root that cannot be read, or a complete walk that finds no image at all
while the library has images (an unmounted volume looks like that), is refused:
nothing is marked missing (`RegistrationRefused`; `allow_empty` marks them).

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

import errno
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from facescan_operator.video_header import VIDEO_SUFFIXES, read_video_header
from facescan_queue.defaults import RESERVED_PREFIX
from facescan_queue.models import NewImage, Registered
from facescan_queue.repository import Queue

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
"""What a walk registers: photos, and videos (one item each, see video_header)."""

_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY = _NOFOLLOW | os.O_DIRECTORY


_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
"""A directory that vanished, or became a file or a link, while the walk ran: not an
error of the walk (what was in it is gone from the library)."""


@dataclass(frozen=True)
class Walk:
    """The images under a root, and the directories the walk could not read."""

    images: list[NewImage]
    unreadable: list[str] = field(default_factory=list)
    """'<directory relative to the root, or .>: <reason>' of each directory not read."""

    @property
    def complete(self) -> bool:
        """Every directory was read: what the walk did not find is not there."""
        return not self.unreadable


class RegistrationRefused(Exception):
    """A registration refused, nothing registered nor marked missing: the library root
    cannot be read, or has no image while images of the library are registered."""


@dataclass(frozen=True)
class RootRegistration:
    """What registering a library root did."""

    library: str
    root: Path
    images: int
    without_size: int
    registered: Registered
    unreadable: list[str]

    def as_json(self) -> dict[str, Any]:
        r = self.registered
        return {
            "library": self.library,
            "root": str(self.root),
            "images": self.images,
            "registered": r.added,
            "changed": r.changed,
            "deferred": r.deferred,
            "missing": r.missing,
            "returned": r.returned,
            "without_size": self.without_size,
            "unreadable": self.unreadable,
        }


async def register_root(
    queue: Queue, library: str, root: Path, *, mark_missing: bool = True, allow_empty: bool = False
) -> RootRegistration:
    """Registers the images under ``root`` in ``library`` (which must exist): new ones
    added, changed ones redone, missing ones found again unmarked and, with
    ``mark_missing`` and a complete walk, the registered images whose file is gone marked
    missing. RegistrationRefused when the root cannot be read, or (marking missing,
    unless ``allow_empty``) when it has no image but the library has images not missing."""
    walk = walk_directory(root)
    if walk.unreadable and walk.unreadable[0].startswith(".:"):
        raise RegistrationRefused(
            f"cannot read the library root {root} ({walk.unreadable[0][3:]}): nothing was "
            "registered and nothing marked missing"
        )
    marking = mark_missing and walk.complete
    if marking and not walk.images and not allow_empty:
        status = await queue.status(library)
        present = status.images - status.missing
        if present:
            raise RegistrationRefused(
                f"no image under {root}, but library {library} has {present} registered "
                "images: is the volume mounted? Nothing was marked missing. If the files "
                "are really gone, register with --allow-empty to mark them missing"
            )
    registered = await queue.register_files(
        library, walk.images, gone=(lambda paths: gone(root, paths)) if marking else None
    )
    return RootRegistration(
        library,
        root,
        len(walk.images),
        sum(1 for i in walk.images if i.width is None),
        registered,
        walk.unreadable,
    )


def gone(root: Path, paths: list[str]) -> list[str]:
    """The paths (relative to ``root``) that no longer exist: nothing there, or a parent
    that is no longer a directory. One that cannot be checked (permission) is not gone,
    nor is one of facescan's own (``RESERVED_PREFIX``: never a file of the root)."""
    vanished = []
    for path in paths:
        if path.startswith(RESERVED_PREFIX):
            continue
        try:
            os.lstat(root / path)
        except (FileNotFoundError, NotADirectoryError):
            vanished.append(path)
        except OSError:
            pass
    return vanished


def image_files(root: Path) -> Iterator[Path]:
    """Every regular image file under ``root`` (recursively, any case of suffix): a
    directory's files in name order, then its subdirectories in name order. Hidden
    directories, symbolic links and special files (FIFOs, devices, sockets) are skipped."""
    for relative, _, _ in _walk(root, []):
        yield root / relative


def scan_directory(root: Path) -> list[NewImage]:
    """The images under ``root`` (walk_directory's), whatever it could not read."""
    return walk_directory(root).images


def walk_directory(root: Path) -> Walk:
    """The images under ``root`` with paths relative to it, each header read from the
    file the walk found (opened relative to its directory, never through a link), and
    the directories it could not read."""
    images = []
    unreadable: list[str] = []
    for relative, directory, entry in _walk(root, unreadable):
        try:
            fd = os.open(entry.name, _NOFOLLOW, dir_fd=directory)
        except OSError:  # unreadable (permission): registered, the detector says why
            status = entry.stat(follow_symlinks=False)
            images.append(NewImage(relative, None, None, status.st_size, _mtime(status)))
            continue
        header = _header(fd, relative)
        if header is not None:  # None: no longer a regular file
            images.append(header)
    return Walk(images, unreadable)


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


def _walk(root: Path, unreadable: list[str]) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    """(path relative to root, descriptor of its directory, its entry) of every regular
    file with an image suffix; the descriptor is open while the entry is looked at. Each
    directory that cannot be read is added to ``unreadable`` (the root as '.')."""
    try:  # the root itself may be a link (e.g. /mnt/photos -> /data/photos)
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        unreadable.append(f".: {exc.strerror or exc}")
        return
    try:
        yield from _walk_at(top, "", unreadable)
    finally:
        os.close(top)


def _walk_at(
    directory: int, prefix: str, unreadable: list[str]
) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        unreadable.append(f"{prefix.rstrip('/') or '.'}: {exc.strerror or exc}")
        return
    subdirectories = []
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:  # gone since it was listed
            continue
        if stat.S_ISREG(mode) and Path(entry.name).suffix.lower() in MEDIA_SUFFIXES:
            yield prefix + entry.name, directory, entry
        elif stat.S_ISDIR(mode) and not entry.name.startswith("."):
            subdirectories.append(entry.name)
    for name in subdirectories:
        try:  # ELOOP if it became a link, ENOTDIR if it became anything else
            fd = os.open(name, _DIRECTORY, dir_fd=directory)
        except OSError as exc:
            if exc.errno not in _GONE:
                unreadable.append(f"{prefix}{name}: {exc.strerror or exc}")
            continue
        try:
            yield from _walk_at(fd, f"{prefix}{name}/", unreadable)
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
        if Path(path).suffix.lower() in VIDEO_SUFFIXES:
            video = read_video_header(file)
            size, when = status.st_size, _mtime(status)
            return NewImage(path, video.width, video.height, size, when, "video", video.duration_ms)
        _register_heif()
        width = height = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(file) as img:
                    width, height = img.size
        except Exception:
            pass
    return NewImage(path, width or None, height or None, status.st_size, _mtime(status))


def _mtime(status: os.stat_result) -> datetime:
    """The modification time, to the microsecond PostgreSQL keeps (exactly: no float)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=status.st_mtime_ns // 1000)


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
