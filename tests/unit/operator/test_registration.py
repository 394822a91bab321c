"""registration: finding image files under a root and reading their size from headers."""

from __future__ import annotations

import shutil
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
    _touch(tmp_path, "notes.txt", "movie.mp4", "raw.CR2", "jpg", "a.jpg.xmp", "b.jpg")
    assert _relative(tmp_path) == ["b.jpg"]


def test_symlinked_files_are_listed_and_symlinked_directories_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside, "o.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(outside / "o.jpg")
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    assert _relative(root) == ["dangling.jpg", "link.jpg"]


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
