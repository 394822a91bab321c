"""registration: finding image files under a root and reading their size from headers;
regular files only, from beneath the root only, never blocked by a special file."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from facescan_operator.registration import image_files, read_header, scan_directory

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def _touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _relative(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in image_files(root)]


def test_finds_images_recursively_each_directory_before_its_subdirectories(
    tmp_path: Path,
) -> None:
    _touch(tmp_path, "b.jpg", "a.png", "2020/01/c.jpeg", "2019/d.heic", "2020/z.webp")
    assert _relative(tmp_path) == ["a.png", "b.jpg", "2019/d.heic", "2020/z.webp", "2020/01/c.jpeg"]


def test_suffixes_match_in_any_case(tmp_path: Path) -> None:
    names = ["A.JPG", "b.Jpeg", "c.PNG", "d.HeIc", "e.HEIF", "f.GIF", "g.BMP", "h.TIF", "i.tiff"]
    _touch(tmp_path, *names)
    assert _relative(tmp_path) == sorted(names)


def test_hidden_directories_are_skipped(tmp_path: Path) -> None:
    _touch(tmp_path, ".thumbnails/a.jpg", "x/.cache/b.jpg", "x/c.jpg", ".d.jpg")
    # a hidden file is still an image; only hidden directories are skipped
    assert _relative(tmp_path) == [".d.jpg", "x/c.jpg"]


def test_non_images_are_ignored(tmp_path: Path) -> None:
    _touch(tmp_path, "notes.txt", "movie.wmv", "raw.CR2", "jpg", "a.jpg.xmp", "b.jpg")
    assert _relative(tmp_path) == ["b.jpg"]


def test_no_symlink_is_followed_out_of_the_root_nor_within_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside, "o.jpg", "sub/p.jpg")
    root = tmp_path / "root"
    _touch(root, "real.jpg", "album/kept.jpg")
    (root / "link.jpg").symlink_to(outside / "o.jpg")
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    (root / "album" / "up").symlink_to("..", target_is_directory=True)  # a directory loop
    (root / "loop-a.jpg").symlink_to("loop-b.jpg")  # a loop of file links
    (root / "loop-b.jpg").symlink_to("loop-a.jpg")
    (root / "inside.jpg").symlink_to(root / "real.jpg")  # inside the root: skipped too
    (root / "album" / "twin.jpg").symlink_to("kept.jpg")
    assert _relative(root) == ["real.jpg", "album/kept.jpg"]
    assert [i.path for i in scan_directory(root)] == ["real.jpg", "album/kept.jpg"]


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    _touch(tmp_path / "data", "a.jpg", "x/b.jpg")
    (tmp_path / "photos").symlink_to(tmp_path / "data", target_is_directory=True)
    assert _relative(tmp_path / "photos") == ["a.jpg", "x/b.jpg"]


def test_a_directory_swapped_for_a_link_during_the_walk_is_not_entered(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside, "secret.jpg")
    root = tmp_path / "root"
    _touch(root, "a.jpg", "sub/b.jpg")
    walk = image_files(root)
    assert next(walk) == root / "a.jpg"  # the root is listed, "sub" not yet opened
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    assert list(walk) == []


@contextlib.contextmanager
def _fifos_unblocked_after(fifos: list[Path], seconds: float) -> Iterator[None]:
    """After ``seconds``, keeps unblocking any reader stuck opening one of ``fifos`` (the
    bug under test), so that a failing test fails instead of hanging."""
    done = threading.Event()

    def unblock() -> None:
        if done.wait(seconds):
            return
        while not done.wait(0.1):
            for fifo in fifos:
                with contextlib.suppress(OSError):  # ENXIO: no reader waits
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_special_files_named_like_images_are_skipped_without_blocking(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLES / "obama.jpg", tmp_path / "real.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe.png")
    specials = ["fifo.jpg", "d/pipe.png"]
    with socket.socket(socket.AF_UNIX) as sock:
        with contextlib.suppress(OSError):  # a socket path has at most 107 bytes
            sock.bind(str(tmp_path / "socket.jpg"))
            specials.append("socket.jpg")
        with contextlib.suppress(PermissionError):  # a device needs CAP_MKNOD
            os.mknod(tmp_path / "zero.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
            specials.append("zero.jpg")
        started = time.monotonic()
        with _fifos_unblocked_after([tmp_path / "fifo.jpg", tmp_path / "d" / "pipe.png"], 5):
            listed = _relative(tmp_path)
            images = scan_directory(tmp_path)
            # named one by one (`facescan scan FILE`): never opened, so never sized
            sized = {p: read_header(tmp_path / p).file_bytes for p in specials}
    assert time.monotonic() - started < 4, "blocked on a special file"
    assert listed == ["real.jpg"]
    assert [(i.path, i.width, i.height) for i in images] == [("real.jpg", 910, 1137)]
    assert sized == dict.fromkeys(specials)


def test_empty_root_has_no_images(tmp_path: Path) -> None:
    assert _relative(tmp_path) == []


def test_size_comes_from_the_header(tmp_path: Path) -> None:
    header = read_header(SAMPLES / "obama.jpg")
    assert (header.width, header.height) == (910, 1137)
    assert header.file_bytes == (SAMPLES / "obama.jpg").stat().st_size
    assert header.path == str(SAMPLES / "obama.jpg")
    png = read_header(SAMPLES / "astronaut.png")
    assert (png.width, png.height) == (512, 512)


def test_only_the_header_is_needed(tmp_path: Path) -> None:
    full = (SAMPLES / "group_t1.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 3])
    header = read_header(cut)
    assert (header.width, header.height) == (1280, 886)
    assert header.file_bytes == len(full) // 3


def test_size_is_the_stored_one_not_the_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 200)).save(path, exif=exif)
    header = read_header(path)
    assert (header.width, header.height) == (300, 200)


def test_unreadable_files_have_no_size(tmp_path: Path) -> None:
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "missing.jpg")
    for path, size in ((text, 12), (empty, 0), (dangling, None)):
        header = read_header(path)
        assert (header.width, header.height) == (None, None)
        assert header.file_bytes == size


def test_scan_directory_gives_paths_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "2020").mkdir()
    shutil.copyfile(SAMPLES / "biden.jpg", tmp_path / "2020" / "biden.jpg")
    (tmp_path / "bad.png").write_text("nope")
    images = scan_directory(tmp_path)
    assert [(i.path, i.width is not None) for i in images] == [
        ("bad.png", False),
        ("2020/biden.jpg", True),
    ]
    assert images[0].file_bytes == 4
