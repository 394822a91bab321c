"""Library files are opened beneath the library root in one step: no path, symlink or
directory swapped for a symlink while the detector opens the file leads out of it.

Both ways of opening are tried on a real temporary tree: the kernel's openat2 with
RESOLVE_BENEATH (where this kernel has it) and the walk one component at a time that
older kernels get."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from facescan_detector import beneath
from facescan_detector.errors import DetectorError, ImageMissing, ImagePermissionError
from facescan_detector.loading import load_image

Opener = Callable[[int, str, int], int]

OPENERS: dict[str, Opener] = {"openat2": beneath.open_beneath, "walk": beneath.walk_beneath}

SWAPPER = """
import os, sys
root = sys.argv[1]
while True:  # album: the real directory, then a symlink leading out, and back
    os.rename(root + "/album", root + "/real")
    os.rename(root + "/link", root + "/album")
    os.rename(root + "/album", root + "/link")
    os.rename(root + "/real", root + "/album")
"""


@pytest.fixture(params=sorted(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    if request.param == "openat2" and not beneath._openat2_works():
        pytest.skip("this kernel has no openat2: open_beneath walks like walk_beneath")
    return OPENERS[request.param]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/album/x.txt says "inside"; outside/album/x.txt, next to the root, "outside";
    root/link is a symlink to outside/album, ready to be swapped in for root/album."""
    root = tmp_path / "root"
    (root / "album" / "deeper").mkdir(parents=True)
    (root / "album" / "x.txt").write_text("inside")
    (tmp_path / "outside" / "album").mkdir(parents=True)
    (tmp_path / "outside" / "album" / "x.txt").write_text("outside")
    (root / "link").symlink_to(tmp_path / "outside" / "album")
    return root


@pytest.fixture
def root_fd(tree: Path) -> Iterator[int]:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def read(opener: Opener, root_fd: int, path: str) -> str:
    fd = opener(root_fd, path, os.O_RDONLY)
    with open(fd, "rb") as file:
        return file.read().decode()


@pytest.mark.parametrize(
    "path",
    [
        "album/x.txt",
        "./album//x.txt",
        "album/deeper/../x.txt",
        "album/up/album/x.txt",  # up -> .. (relative, stays inside)
        "album/same.txt",  # same.txt -> x.txt
        "chain.txt",  # chain.txt -> album/same.txt -> x.txt
    ],
)
def test_paths_and_links_that_stay_inside_open_the_file(
    opener: Opener, tree: Path, root_fd: int, path: str
) -> None:
    (tree / "album" / "up").symlink_to("..")
    (tree / "album" / "same.txt").symlink_to("x.txt")
    (tree / "chain.txt").symlink_to("album/same.txt")
    assert read(opener, root_fd, path) == "inside"


@pytest.mark.parametrize(
    "path",
    [
        "../outside/album/x.txt",
        "album/../../outside/album/x.txt",
        "link/x.txt",  # absolute symlink, to a folder outside
        "rel/x.txt",  # relative symlink climbing out
        "abs.txt",  # absolute symlink, even to a file inside the root
        "/etc/hostname",
    ],
)
def test_every_way_out_of_the_root_is_refused_as_an_escape(
    opener: Opener, tree: Path, root_fd: int, path: str
) -> None:
    (tree / "rel").symlink_to("../outside/album")
    (tree / "abs.txt").symlink_to(tree / "album" / "x.txt")
    with pytest.raises(OSError, match="resolves outside the library root") as error:
        opener(root_fd, path, os.O_RDONLY)
    assert error.value.errno == errno.EXDEV


def test_a_symlink_loop_is_refused(opener: Opener, tree: Path, root_fd: int) -> None:
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("a")
    with pytest.raises(OSError, match="Too many levels of symbolic links") as error:
        opener(root_fd, "a/x.txt", os.O_RDONLY)
    assert error.value.errno == errno.ELOOP


def test_missing_files_and_files_used_as_folders_fail_as_the_kernel_says(
    opener: Opener, root_fd: int
) -> None:
    with pytest.raises(FileNotFoundError):
        opener(root_fd, "album/nobody.txt", os.O_RDONLY)
    with pytest.raises(NotADirectoryError):
        opener(root_fd, "album/x.txt/y.txt", os.O_RDONLY)


def test_a_folder_swapped_for_a_symlink_while_opening_never_leads_out(
    opener: Opener, tree: Path, root_fd: int
) -> None:
    seen = race(tree, lambda: read(opener, root_fd, "album/x.txt"))
    assert seen["outside"] == 0, seen
    assert seen["inside"] > 0, seen  # the race ran: both states were met
    assert seen["EXDEV"] + seen["ELOOP"] + seen["ENOENT"] > 0, seen


def test_a_loaded_image_never_comes_from_outside_the_root_under_a_swap(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "album").mkdir(parents=True)
    (tmp_path / "outside" / "album").mkdir(parents=True)
    Image.new("RGB", (2, 2), (0, 0, 255)).save(root / "album" / "x.png")
    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "outside" / "album" / "x.png")
    (root / "link").symlink_to(tmp_path / "outside" / "album")

    def load() -> str:
        try:
            blue = load_image(root, "album/x.png").pixels[0, 0, 2] == 255
        except DetectorError as exc:
            return type(exc).__name__
        return "inside" if blue else "outside"

    seen = race(root, load)
    assert seen["outside"] == 0, seen
    assert seen["inside"] > 0, seen
    assert seen["ImagePermissionError"] > 0, seen
    # typed failures only: no bare OSError (an errno name) nor any other error type
    assert set(seen) <= {"inside", ImagePermissionError.__name__, ImageMissing.__name__}


def race(root: Path, attempt: Callable[[], str], *, seconds: float = 2.0) -> Counter[str]:
    """Runs ``attempt`` over and over for ``seconds`` while another process keeps
    swapping root/album and root/link; counts what each attempt returned (or the errno
    name of the OSError it raised)."""
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root)])
    seen: Counter[str] = Counter()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                seen[attempt()] += 1
            except OSError as exc:
                seen[errno.errorcode.get(exc.errno or 0, "?")] += 1
    finally:
        swapper.kill()
        swapper.wait()
    return seen
