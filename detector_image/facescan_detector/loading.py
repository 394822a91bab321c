"""Image loading: one library file -> RGB pixels at the size the cascade step asks for.

Called by the run loop (and ``calibrate``) once per image, before detection. It opens
the file beneath the library root in one step (``beneath``: no symlink swapped in after
a check leads out), decodes at reduced size where the format allows it (JPEG draft
mode), converts every mode to 8-bit RGB, resizes to the step's long side and applies
the EXIF orientation last, so face boxes come out in the orientation a person sees.
Every failure becomes one of the typed errors in ``errors``, message naming the file,
cause chained.

Choices: transparency is composited onto white (what a viewer shows; pixels under
alpha 0 are often garbage); 16-bit samples are scaled (v * 255 / 65535, rounded), not
clipped, to 8-bit gray a strip at a time and resized before they become RGB, so that a
wide image costs no more memory than an 8-bit one (sizing's DECODE_BYTES_PER_PIXEL);
CMYK goes through its ICC profile when it has one. Resize is LANCZOS; where no
draft mode helped, ``reducing_gap=1.5`` box-reduces by an integer factor first (12 MP
PNG to 1280: 141 -> 63 ms, mean abs difference 0.26 from plain LANCZOS; draft mode
itself costs 0.49).
While decoding, Pillow's UserWarnings (corrupt metadata: noise) and its
DecompressionBombWarning (the limit is ``max_pixels``) are silenced; ``catch_warnings``
is not thread-safe, and the run loop is one thread.
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from facescan_detector.beneath import O_PATH, open_beneath
from facescan_detector.errors import (
    DetectorError,
    DetectorOOM,
    DetectorUnavailable,
    ImageDecodeError,
    ImageMissing,
    ImagePermissionError,
)
from facescan_queue.defaults import DEFAULT_MAX_DIMENSION

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transpose that shows the image upright (as ImageOps does)."""

_DEAD_MOUNT = frozenset({errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN})
"""errno values of a library mount that went away: not the image's fault."""

_DECODE_ERRORS = (
    OSError,  # only those without errno reach the decode branch
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
)
"""What Pillow and its plugins raise on corrupt, unsupported or oversized input."""

_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
"""Modes of 16- and 32-bit samples (16-bit gray PNG, 16/32-bit and float TIFF)."""

_STRIP_PIXELS = 1 << 20
"""Pixels converted at a time from a wide mode (a few MB of temporary arrays)."""


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels plus what is needed to map boxes back to the original image."""

    pixels: np.ndarray
    """HxWx3 uint8 RGB, C-contiguous, display orientation, resized."""
    original_width: int
    """Width of the original image in display orientation (after the EXIF transpose)."""
    original_height: int
    scale: float
    """``pixels.shape[1] / original_width``: size factor from the original to pixels."""
    file_bytes: int


def os_error(exc: OSError, relative_path: str, action: str) -> DetectorError:
    """The typed error for an operating-system failure on one file."""
    if exc.errno == errno.EXDEV:  # beneath.open_beneath: a way out of the root
        return ImagePermissionError(f"{relative_path}: resolves outside the library root")
    message = f"{relative_path}: cannot {action}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ImageMissing(message)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR, errno.ENAMETOOLONG):
        return ImagePermissionError(message)
    if exc.errno in _DEAD_MOUNT:
        return DetectorUnavailable(message)
    if exc.errno == errno.ENOMEM:
        return DetectorOOM(message)
    return DetectorError(message)


def open_in_library(root: Path, relative_path: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``relative_path`` opened beneath ``root`` (see ``beneath``): the
    path is resolved and opened in one step, so nothing swapped in after a check can
    lead out of the root.

    Absolute paths, ``..`` escapes and symlinks leading outside (absolute symlinks
    included) raise ImagePermissionError; a file that does not exist raises
    ImageMissing. A root that is gone raises DetectorUnavailable (the mount, not the
    image, is at fault). The caller closes the descriptor.
    """
    if "\0" in relative_path or os.path.isabs(relative_path):
        raise ImagePermissionError(f"{relative_path}: path must be relative to the library root")
    try:
        root_fd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise DetectorUnavailable(
                f"{relative_path}: library root {root} is not a directory"
            ) from exc
        error = os_error(exc, relative_path, f"reach library root {root}")
        if isinstance(error, ImageMissing):
            error = DetectorUnavailable(str(error))
        raise error from exc
    try:
        return open_beneath(root_fd, relative_path, flags)
    except OSError as exc:
        raise os_error(exc, relative_path, "read") from exc
    finally:
        os.close(root_fd)


def resolve_inside(root: Path, relative_path: str) -> Path:
    """The real path of ``relative_path`` under ``root``, found as ``open_in_library``
    finds it (for messages and tools: open with ``open_in_library``, never by this path)."""
    fd = open_in_library(root, relative_path, O_PATH)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


@functools.cache
def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF, once, at the first ISO base media file (``ftyp`` box
    first, as every HEIF/HEIC/AVIF file starts): the import costs ~40 ms and ~10 MB of
    resident memory that a library of JPEGs never needs."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def load_image(
    root: Path,
    relative_path: str,
    *,
    max_dimension: int = DEFAULT_MAX_DIMENSION,
    scale: float = 1.0,
    max_pixels: int = 178_956_970,
) -> LoadedImage:
    """Decode ``root / relative_path`` with its long side at ``min(long, max_dimension) * scale``.

    ``max_dimension`` 0 means no cap. Images over ``max_pixels`` (width x height, from
    the header) are refused as decompression bombs before any pixel is decoded.
    """
    if not (0 < scale < math.inf) or max_dimension < 0:
        raise ValueError(f"need 0 < scale < inf and max_dimension >= 0: {scale}, {max_dimension}")
    file, info = open_regular(root, relative_path)
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            head = file.read(12)
            if not head:  # procfs files say size 0 and have data: read, do not stat
                raise ImageDecodeError(f"{relative_path}: cannot decode image: empty file")
            if head[4:8] == b"ftyp":
                _register_heif()
            file.seek(0)
            with Image.open(file) as image:
                pixels, width, height = _decode(
                    image, relative_path, max_dimension, scale, max_pixels
                )
    except DetectorError:
        raise
    except MemoryError as exc:
        raise DetectorOOM(f"{relative_path}: out of memory while decoding: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:
            raise os_error(exc, relative_path, "read") from exc
        raise ImageDecodeError(f"{relative_path}: cannot decode image: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{relative_path}: cannot decode image: {exc}") from exc
    return LoadedImage(
        pixels=pixels,
        original_width=width,
        original_height=height,
        scale=pixels.shape[1] / width,
        file_bytes=info.st_size,
    )


def open_regular(root: Path, relative_path: str) -> tuple[io.BufferedReader, os.stat_result]:
    """The file opened for reading beneath the root, and its status; anything but a
    regular file is refused (a FIFO without blocking: it is opened non-blocking)."""
    fd = open_in_library(root, relative_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            strerror = os.strerror(errno.EISDIR)
            raise ImagePermissionError(f"{relative_path}: cannot read: {strerror}")
        if not stat.S_ISREG(info.st_mode):
            raise ImagePermissionError(f"{relative_path}: not a regular file")
        return open(fd, "rb"), info  # the file object owns the descriptor from here
    except BaseException:
        os.close(fd)
        raise


def _decode(
    image: Image.Image,
    relative_path: str,
    max_dimension: int,
    scale: float,
    max_pixels: int,
    *,
    reducing_gap: float = 1.5,
) -> tuple[np.ndarray, int, int]:
    """Pixels (display orientation, target size) and the original display width, height."""
    width, height = image.size  # as stored; the long side is the same in both orientations
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{relative_path}: {width}x{height} exceeds {max_pixels} pixels "
            "(decompression bomb guard)"
        )
    long_side = max(width, height)
    capped = min(long_side, max_dimension) if max_dimension else long_side
    target_long = max(1, round(capped * scale))
    short = max(1, round(min(width, height) * target_long / long_side))
    target = (target_long, short) if width >= height else (short, target_long)
    if target_long < long_side:
        image.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 size, never below target
    if image.mode in _WIDE_MODES:  # 8-bit gray first, strip by strip, resized before RGB
        gray = _wide_to_gray(image)
        if gray.size != target:
            gray = gray.resize(target, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
        rgb = gray.convert("RGB")
    else:
        rgb = _to_rgb(image)  # loads the pixels
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    orientation = _orientation(image)
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return np.array(rgb, dtype=np.uint8), width, height


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8, read after load; unreadable or odd values count as upright."""
    try:
        value = image.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:  # corrupt metadata must not cost the faces in good pixels
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _wide_to_gray(image: Image.Image) -> Image.Image:
    """8-bit gray ("L") from 16- or 32-bit samples, a strip of rows at a time, so that
    the conversion costs 1 byte per pixel beyond the decoded image: integer samples
    (16-bit PNG/TIFF data) scaled from 0..65535, float ones clipped to 0..255."""
    if image.mode == "F":
        return image.convert("L")
    width, height = image.size
    gray = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = np.asarray(image.crop((0, top, width, bottom)))
        samples = strip.clip(0, 65535).astype(np.uint32)
        gray[top:bottom] = (samples * 255 + 32767) // 65535
    return Image.fromarray(gray)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any 8-bit mode: alpha on white, CMYK through ICC."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    icc = image.info.get("icc_profile")
    if image.mode == "CMYK" and isinstance(icc, bytes) and icc:
        try:
            cmyk = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, cmyk, srgb, outputMode="RGB")
        except (OSError, ImageCms.PyCMSError):
            converted = None  # broken profile: the plain conversion below still works
        if converted is not None:
            return converted
    if image.mode == "RGB":  # most photos: convert() would only copy the decoded pixels
        image.load()
        return image
    return image.convert("RGB")
