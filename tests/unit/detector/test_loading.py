"""Image loading: real photographs, and odd or broken files made here with Pillow."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from facescan_detector.errors import (
    DetectorError,
    DetectorUnavailable,
    ImageDecodeError,
    ImageMissing,
    ImagePermissionError,
)
from facescan_detector.loading import load_image, resolve_inside

SAMPLES = Path(__file__).resolve().parents[3] / "samples"

# The transpose that undoes each EXIF orientation: stored = UNDO[o](displayed).
UNDO = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_as(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for an upright view tagged with this orientation."""
    undo = UNDO[orientation]
    return upright if undo is None else upright.transpose(undo)


def photo(name: str = "obama.jpg") -> Image.Image:
    with Image.open(SAMPLES / name) as image:
        return image.convert("RGB")


def mean_abs_diff(a: np.ndarray, b: np.ndarray | Image.Image) -> float:
    return float(np.abs(a.astype(np.int32) - np.asarray(b).astype(np.int32)).mean())


def exif(orientation: int) -> bytes:
    data = Image.Exif()
    data[0x0112] = orientation
    return data.tobytes()


def png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB or lie in its header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def assert_names_file(error: pytest.ExceptionInfo[DetectorError], name: str) -> None:
    assert name in str(error.value)


# Real photographs


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [("obama.jpg", 910, 1137), ("group_t1.jpg", 1280, 886), ("astronaut.png", 512, 512)],
)
def test_sample_photographs_load_as_contiguous_rgb_at_their_own_size(
    name: str, width: int, height: int
) -> None:
    loaded = load_image(SAMPLES, name)
    assert loaded.pixels.shape == (height, width, 3)
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.flags.c_contiguous
    assert (loaded.original_width, loaded.original_height) == (width, height)
    assert loaded.scale == 1.0
    assert loaded.file_bytes == (SAMPLES / name).stat().st_size
    assert mean_abs_diff(loaded.pixels, photo(name)) < 0.01


@pytest.mark.parametrize(
    ("max_dimension", "scale", "shape"),
    [(640, 1.0, (443, 640, 3)), (1280, 0.5, (443, 640, 3)), (0, 0.25, (222, 320, 3))],
)
def test_long_side_is_capped_at_max_dimension_then_scaled(
    max_dimension: int, scale: float, shape: tuple[int, int, int]
) -> None:
    loaded = load_image(SAMPLES, "group_t1.jpg", max_dimension=max_dimension, scale=scale)
    assert loaded.pixels.shape == shape
    assert (loaded.original_width, loaded.original_height) == (1280, 886)
    assert loaded.scale == shape[1] / 1280


def test_image_smaller_than_max_dimension_is_not_enlarged() -> None:
    loaded = load_image(SAMPLES, "biden.jpg", max_dimension=4000)
    assert loaded.pixels.shape == (2204, 970, 3)


# Orientation and size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_is_returned_in_display_orientation(
    tmp_path: Path, orientation: int
) -> None:
    upright = photo()
    stored_as(upright, orientation).save(tmp_path / "t.jpg", quality=95, exif=exif(orientation))

    loaded = load_image(tmp_path, "t.jpg", max_dimension=0)

    assert (loaded.original_width, loaded.original_height) == (910, 1137)
    assert loaded.pixels.shape == (1137, 910, 3)
    assert mean_abs_diff(loaded.pixels, upright) < 2.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_resized_to_the_display_shape(
    tmp_path: Path, orientation: int
) -> None:
    upright = photo()
    stored_as(upright, orientation).save(tmp_path / "t.jpg", quality=95, exif=exif(orientation))

    loaded = load_image(tmp_path, "t.jpg", max_dimension=640)

    assert loaded.pixels.shape == (640, 512, 3)
    assert loaded.scale == 512 / 910
    expected = upright.resize((512, 640), Image.Resampling.LANCZOS)
    assert mean_abs_diff(loaded.pixels, expected) < 2.0


@pytest.mark.parametrize(
    ("name", "options"), [("t.png", {}), ("t.webp", {"quality": 95}), ("t.tif", {})]
)
def test_exif_orientation_of_png_webp_and_tiff_is_applied(
    tmp_path: Path, name: str, options: dict[str, int]
) -> None:
    upright = photo()
    stored_as(upright, 6).save(tmp_path / name, exif=exif(6), **options)

    loaded = load_image(tmp_path, name, max_dimension=0)

    assert (loaded.original_width, loaded.original_height) == (910, 1137)
    assert mean_abs_diff(loaded.pixels, upright) < 2.0


def test_large_jpeg_is_decoded_in_draft_mode_to_exactly_the_target_long_side(
    tmp_path: Path,
) -> None:
    photo("group_t1.jpg").resize((4000, 2769), Image.Resampling.LANCZOS).save(
        tmp_path / "big.jpg", quality=92
    )
    with Image.open(tmp_path / "big.jpg") as full:
        reference = full.convert("RGB").resize((1280, 886), Image.Resampling.LANCZOS)

    loaded = load_image(tmp_path, "big.jpg")

    assert loaded.pixels.shape == (886, 1280, 3)
    assert (loaded.original_width, loaded.original_height) == (4000, 2769)
    assert loaded.scale == 1280 / 4000
    assert mean_abs_diff(loaded.pixels, reference) < 1.0


# Formats and pixel modes


@pytest.mark.parametrize("orientation", [1, 6])
def test_heic_round_trips_in_display_orientation(tmp_path: Path, orientation: int) -> None:
    upright = photo().resize((182, 227))
    heif = pillow_heif.from_pillow(stored_as(upright, orientation))
    heif.save(tmp_path / "p.heic", quality=95, exif=exif(orientation))

    loaded = load_image(tmp_path, "p.heic")

    assert loaded.pixels.shape == (227, 182, 3)
    assert (loaded.original_width, loaded.original_height) == (182, 227)
    assert mean_abs_diff(loaded.pixels, upright) < 4.0


def test_palette_png_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 4), 0)
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    image.paste(1, (4, 0, 8, 4))
    image.save(tmp_path / "p.png", transparency=0)

    pixels = load_image(tmp_path, "p.png").pixels

    assert (pixels[:, :4] == 255).all()
    assert (pixels[:, 4:] == (0, 0, 200)).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    alpha = np.array([[0, 128, 255]], dtype=np.uint8).repeat(2, axis=0)
    black = Image.new("L", (3, 2), 0)
    Image.merge("RGBA", (black, black, black, Image.fromarray(alpha))).convert(mode).save(
        tmp_path / "a.png"
    )

    pixels = load_image(tmp_path, "a.png").pixels

    assert pixels[0, :, 0].tolist() == [255, 127, 0]
    assert (pixels == pixels[..., :1]).all()


def test_16_bit_grayscale_png_is_scaled_to_the_full_8_bit_range(tmp_path: Path) -> None:
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)
    Image.fromarray(gradient).save(tmp_path / "g16.png")

    pixels = load_image(tmp_path, "g16.png").pixels

    assert pixels[0, :, 0].tolist() == list(range(256))
    assert (pixels == pixels[..., :1]).all()


def test_48_bit_rgb_png_is_scaled_to_8_bit(tmp_path: Path) -> None:
    level = np.linspace(0, 65535, 16).round().astype(">u2")
    row = np.stack([level, level[::-1], np.full(16, 32896, ">u2")], axis=1)
    (tmp_path / "rgb48.png").write_bytes(png(16, 1, 16, 2, b"\x00" + row.tobytes()))

    pixels = load_image(tmp_path, "rgb48.png").pixels

    assert pixels[0, :, 0].tolist() == list(range(0, 256, 17))
    assert pixels[0, :, 1].tolist() == list(range(255, -1, -17))
    assert (pixels[0, :, 2] == 128).all()


def test_one_bit_png_is_black_and_white(tmp_path: Path) -> None:
    photo().convert("1").save(tmp_path / "bw.png")
    pixels = load_image(tmp_path, "bw.png").pixels
    assert set(np.unique(pixels).tolist()) == {0, 255}


def test_grayscale_jpeg_has_three_equal_channels(tmp_path: Path) -> None:
    gray = photo().convert("L")
    gray.save(tmp_path / "gray.jpg", quality=95)
    pixels = load_image(tmp_path, "gray.jpg").pixels
    assert (pixels == pixels[..., :1]).all()
    assert mean_abs_diff(pixels[..., 0], gray) < 2.0


@pytest.mark.parametrize("icc_profile", [None, b"not a profile"])
def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path, icc_profile: bytes | None) -> None:
    original = photo()
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    original.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95, **extra)
    with Image.open(tmp_path / "cmyk.jpg") as stored:
        assert stored.mode == "CMYK"

    pixels = load_image(tmp_path, "cmyk.jpg").pixels

    assert mean_abs_diff(pixels, original) < 3.0


@pytest.mark.parametrize(("name", "options"), [("p.webp", {"quality": 95}), ("p.bmp", {})])
def test_webp_and_bmp_are_decoded(tmp_path: Path, name: str, options: dict[str, int]) -> None:
    original = photo()
    original.save(tmp_path / name, **options)
    assert mean_abs_diff(load_image(tmp_path, name).pixels, original) < 3.0


def test_animated_gif_yields_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    assert (load_image(tmp_path, "a.gif").pixels == (255, 0, 0)).all()


def test_multi_page_tiff_yields_its_first_page(tmp_path: Path) -> None:
    first, second = photo(), photo("astronaut.png")
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    loaded = load_image(tmp_path, "pages.tif")
    assert (loaded.original_width, loaded.original_height) == (910, 1137)
    assert mean_abs_diff(loaded.pixels, first) < 0.01


def test_corrupt_exif_neither_fails_the_image_nor_leaks_a_warning(tmp_path: Path) -> None:
    # One IFD entry whose data lies past the end: Pillow warns and skips it.
    tiff = b"II*\x00" + struct.pack("<IHHHIII", 8, 1, 0x010F, 2, 1000, 0x100, 0)
    photo().save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00" + tiff)
    assert load_image(tmp_path, "odd.jpg").pixels.shape == (1137, 910, 3)


# Broken files


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [(100_000, 100_000, 178_956_970), (20_000, 10_000, 178_956_970), (64, 64, 4095)],
)
def test_image_over_max_pixels_is_refused_before_decoding(
    tmp_path: Path, width: int, height: int, max_pixels: int
) -> None:
    (tmp_path / "bomb.png").write_bytes(png(width, height, 8, 0, b"\x00" * 65))
    with pytest.raises(ImageDecodeError) as error:
        load_image(tmp_path, "bomb.png", max_pixels=max_pixels)
    assert_names_file(error, "bomb.png")
    assert "bomb" in str(error.value).replace("bomb.png", "")


def test_real_photograph_over_max_pixels_is_refused() -> None:
    with pytest.raises(ImageDecodeError, match=r"obama\.jpg: 910x1137 exceeds 1000000"):
        load_image(SAMPLES, "obama.jpg", max_pixels=1_000_000)


def test_truncated_jpeg_is_a_decode_error(tmp_path: Path) -> None:
    data = (SAMPLES / "obama.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as error:
        load_image(tmp_path, "cut.jpg")
    assert_names_file(error, "cut.jpg")
    assert isinstance(error.value.__cause__, OSError)


def test_truncated_heic_is_a_decode_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(photo().resize((64, 80))).save(buffer, quality=90)
    (tmp_path / "cut.heic").write_bytes(buffer.getvalue()[:-200])
    with pytest.raises(ImageDecodeError) as error:
        load_image(tmp_path, "cut.heic")
    assert_names_file(error, "cut.heic")


def test_zero_byte_file_is_a_decode_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg: .*empty file"):
        load_image(tmp_path, "empty.jpg")


def test_text_file_named_jpg_is_a_decode_error(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("shopping list\n")
    with pytest.raises(ImageDecodeError) as error:
        load_image(tmp_path, "notes.jpg")
    assert_names_file(error, "notes.jpg")
    assert isinstance(error.value.__cause__, Image.UnidentifiedImageError)


# Paths and permissions


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    (root / "album").mkdir(parents=True)
    shutil.copy(SAMPLES / "obama.jpg", root / "album" / "obama.jpg")
    shutil.copy(SAMPLES / "biden.jpg", tmp_path / "outside.jpg")
    return root


def test_symlink_inside_the_root_is_followed(library: Path) -> None:
    (library / "link.jpg").symlink_to("album/obama.jpg")
    assert resolve_inside(library, "link.jpg") == library / "album" / "obama.jpg"
    assert load_image(library, "link.jpg").original_width == 910


def test_relative_path_with_dotdot_that_stays_inside_is_allowed(library: Path) -> None:
    assert load_image(library, "album/../album/obama.jpg").original_width == 910


@pytest.mark.parametrize(
    "relative_path",
    [
        "../outside.jpg",
        "album/../../outside.jpg",
        "{root}/../outside.jpg",  # absolute
        "{root}/album/obama.jpg",  # absolute, even where it points inside
        "escape.jpg",  # symlink whose target leaves the root
        "out/outside.jpg",  # symlinked folder leading out
    ],
)
def test_paths_leaving_the_root_are_refused(library: Path, relative_path: str) -> None:
    (library / "escape.jpg").symlink_to("../outside.jpg")
    (library / "out").symlink_to(library.parent)
    relative_path = relative_path.format(root=library)
    with pytest.raises(ImagePermissionError) as error:
        load_image(library, relative_path)
    assert_names_file(error, relative_path)


@pytest.mark.parametrize(
    "relative_path", ["album/nobody.jpg", "no/such/folder.jpg", "album/obama.jpg/x.jpg"]
)
def test_missing_file_is_image_missing(library: Path, relative_path: str) -> None:
    with pytest.raises(ImageMissing) as error:
        load_image(library, relative_path)
    assert_names_file(error, relative_path)


def test_dangling_symlink_inside_the_root_is_image_missing(library: Path) -> None:
    (library / "gone.jpg").symlink_to("album/deleted.jpg")
    with pytest.raises(ImageMissing, match=r"gone\.jpg"):
        load_image(library, "gone.jpg")


def test_directory_named_like_an_image_is_a_permission_error(library: Path) -> None:
    (library / "x.jpg").mkdir()
    with pytest.raises(ImagePermissionError, match=r"x\.jpg: cannot read: Is a directory"):
        load_image(library, "x.jpg")


def test_fifo_named_like_an_image_is_refused_without_blocking(library: Path) -> None:
    fifo = library / "pipe.jpg"
    os.mkfifo(fifo)

    def unblock() -> None:  # were the loader to block in open(), a writer frees it late
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(3.0, unblock)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ImagePermissionError, match=r"pipe\.jpg: not a regular file"):
            load_image(library, "pipe.jpg")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 3.0


@contextlib.contextmanager
def as_unprivileged_user() -> Iterator[None]:
    """Root reads mode-000 files; drop to 'nobody' (effective ids only) for the test."""
    if os.geteuid() != 0:
        yield
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to drop to")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_file_is_a_permission_error() -> None:
    root = Path(tempfile.mkdtemp(prefix="facescan-unreadable-"))  # /tmp, reachable by nobody
    try:
        root.chmod(0o755)
        shutil.copy(SAMPLES / "obama.jpg", root / "locked.jpg")
        (root / "locked.jpg").chmod(0o644)
        load_image(root, "locked.jpg")  # plugins imported while still privileged
        with as_unprivileged_user():  # the folder is reachable: only the mode will differ
            assert load_image(root, "locked.jpg").original_width == 910
        (root / "locked.jpg").chmod(0o000)
        with as_unprivileged_user(), pytest.raises(ImagePermissionError) as error:
            load_image(root, "locked.jpg")
        assert_names_file(error, "locked.jpg")
        assert isinstance(error.value.__cause__, PermissionError)
    finally:
        shutil.rmtree(root)


def test_io_error_from_the_filesystem_is_unavailable_not_the_images_fault() -> None:
    # Reading /proc/<pid>/mem at offset 0 (unmapped) fails with EIO, like a dead mount.
    with pytest.raises(DetectorUnavailable, match="mem: cannot read: Input/output error"):
        load_image(Path("/proc/self"), "mem")


def test_missing_library_root_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DetectorUnavailable, match=r"obama\.jpg"):
        load_image(tmp_path / "unmounted", "obama.jpg")


def test_no_file_is_left_open(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    photo().save(tmp_path / "ok.jpg")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        load_image(tmp_path, "ok.jpg")
        with pytest.raises(ImageDecodeError):
            load_image(tmp_path, "notes.jpg")
    assert len(os.listdir("/proc/self/fd")) == before
