"""Wide images (16-bit and 32-bit samples) decode within the memory the operator's
right-sizing gives a detector for them: a 12000 x 12000 16-bit PNG of a few hundred KB
must not need gigabytes on its way to 8-bit RGB at 1280 px."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facescan_detector.loading import load_image
from facescan_operator.sizing import (
    CLASS_MAX_MEGAPIXELS,
    DECODE_BYTES_PER_PIXEL,
    MIB,
    CalibrationTable,
    memory_bytes,
)

SIDE = 12_000
LARGEST_CLASS = 4
"""The size class of a 144 MP image (over 32 MP, under the decoder's bomb guard)."""

PEAK_OF_DECODING = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from facescan_detector.loading import load_image

    def status_kb(field):
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith(field + ":"))

    root = Path(sys.argv[1])
    load_image(root, "small.png")  # Pillow's plugins, numpy: everything but the image
    before = status_kb("VmRSS")
    loaded = load_image(root, "wide.png", max_dimension=1280)
    print(json.dumps({
        "before_kb": before,
        "peak_kb": status_kb("VmHWM"),
        "shape": list(loaded.pixels.shape),
        "row": loaded.pixels[0, ::160, 0].tolist(),
    }))
    """
)


def gray16_png(path: Path, width: int, height: int) -> np.ndarray:
    """Writes a 16-bit grayscale PNG whose every row is one horizontal ramp 0..65535,
    compressed a band at a time (small on disk, never whole in this process's memory);
    returns the ramp."""
    ramp = np.linspace(0, 65535, width).round().astype(">u2")
    first = b"\x00" + ramp.tobytes()  # filter None
    same = b"\x02" + bytes(2 * width)  # filter Up: the row above again
    compressor = zlib.compressobj(9)
    body = compressor.compress(first)
    band = same * 500
    for done in range(1, height, 500):
        body += compressor.compress(band if height - done >= 500 else same * (height - done))
    body += compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        payload = kind + data
        return struct.pack(">I", len(data)) + payload + struct.pack(">I", zlib.crc32(payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return ramp.astype(np.uint16)


@pytest.mark.slow  # decodes a 144-megapixel image in a subprocess
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_12000_px_16_bit_png_decodes_within_what_sizing_assumed(tmp_path: Path) -> None:
    gray16_png(tmp_path / "wide.png", SIDE, SIDE)
    gray16_png(tmp_path / "small.png", 64, 64)
    assert (tmp_path / "wide.png").stat().st_size < 2 * MIB  # small on disk
    megapixels = SIDE * SIDE / 1e6
    assert CLASS_MAX_MEGAPIXELS[LARGEST_CLASS - 1] < megapixels <= CLASS_MAX_MEGAPIXELS[4]

    done = subprocess.run(
        [sys.executable, "-c", PEAK_OF_DECODING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(done.stdout)

    assert measured["shape"] == [1280, 1280, 3]
    columns = np.arange(0, 1280, 160)
    source_x = (columns + 0.5) * SIDE / 1280 - 0.5  # the ramp is linear: its value there
    expected = 255 * source_x / (SIDE - 1)
    assert np.abs(np.array(measured["row"]) - expected).max() <= 2, measured["row"]
    decoding = (measured["peak_kb"] - measured["before_kb"]) * 1024
    # the decode term of sizing, for this image's own pixels
    assert decoding <= megapixels * DECODE_BYTES_PER_PIXEL * MIB, decoding / MIB
    # the whole process within the limit a HOG detector gets for the largest class
    limit = memory_bytes(CalibrationTable.default(), "hog", LARGEST_CLASS, 1280, 1.0)
    assert measured["peak_kb"] * 1024 <= limit, (measured["peak_kb"] / 1024, limit / MIB)


def test_16_bit_samples_are_scaled_and_resized_like_8_bit_ones(tmp_path: Path) -> None:
    """The 16-bit path reduces to 8-bit before resizing: the result is the 8-bit image
    of the same scene resized, within rounding."""
    ramp = gray16_png(tmp_path / "g16.png", 4000, 300)
    eight = ((ramp.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    Image.fromarray(np.repeat(eight[None, :], 300, axis=0)).save(tmp_path / "g8.png")

    wide = load_image(tmp_path, "g16.png", max_dimension=1000).pixels
    narrow = load_image(tmp_path, "g8.png", max_dimension=1000).pixels

    assert wide.shape == narrow.shape == (75, 1000, 3)
    assert np.array_equal(wide, narrow)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_integer_and_float_images_load_as_8_bit_gray(tmp_path: Path, mode: str) -> None:
    values = np.linspace(0, 65535 if mode == "I" else 255, 256)
    samples = values.astype(np.int32 if mode == "I" else np.float32)[None, :].repeat(8, axis=0)
    Image.fromarray(samples).save(tmp_path / "wide.tif")  # int32: "I", float32: "F"

    pixels = load_image(tmp_path, "wide.tif").pixels

    assert pixels.shape == (8, 256, 3)
    assert pixels[0, :, 0].tolist() == list(range(256))
    assert (pixels == pixels[..., :1]).all()
