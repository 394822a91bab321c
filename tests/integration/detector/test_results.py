"""What a user sees after a detector run over real photographs: faces committed per
image, boxes in the original pixels and orientation, embeddings stored, and no
duplicates when an image is detected again."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pillow_heif
from PIL import Image
from pydantic import SecretStr

from facescan_detector.run import run
from facescan_queue.models import LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from tests.integration.detector.support import (
    HOG_FACES,
    LIB,
    OBAMA_BOX,
    SAMPLES,
    UNKNOWN_SIZE,
    boxes,
    copy_samples,
    detector_settings,
    face_counts,
    register_and_claim,
    run_detector,
)

ORIENTATION = 0x0112


async def test_batch_of_photographs_is_committed_with_faces_boxes_and_embeddings(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    paths = copy_samples(root, HOG_FACES)
    await register_and_claim(hog_queue, paths, "job-a")

    run = await run_detector(dsn, "job-a", root)

    assert run.returncode == 0, run.stderr
    assert run.summary == {
        "owner": "job-a",
        "done": 6,
        "failed": 0,
        "faces": sum(HOG_FACES.values()),
        "reason": "lease finished",
        "exit_code": 0,
    }
    assert await face_counts(db) == HOG_FACES
    status = await hog_queue.status(LIB)
    assert (status.done, status.pending, status.leased, status.faces) == (6, 0, 0, 11)
    assert await hog_queue.failures(LIB) == []
    assert await boxes(hog_queue, "obama.jpg") == [OBAMA_BOX]
    dims = await db.fetch(
        "SELECT vector_dims(embedding_dlib) AS d, embedding_arcface IS NULL AS no_arcface,"
        " model FROM facescan.faces"
    )
    assert {(r["d"], r["no_arcface"], r["model"]) for r in dims} == {(128, True, "hog")}
    outcomes = await db.fetch(
        "SELECT outcome, finished_at IS NOT NULL AS closed, worker FROM facescan.attempts"
    )
    assert [tuple(r) for r in outcomes] == [("done", True, "job-a")] * 6
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0


def save_rotated_with_exif(source: Path, target: Path) -> None:
    """A copy whose pixels are stored turned a quarter, tagged EXIF orientation 6 so that a
    viewer shows it upright, as a phone held sideways writes it."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # display = stored pixels turned 90 degrees clockwise
    with Image.open(source) as upright:
        stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        stored.save(target, quality=95, exif=exif.tobytes())


async def test_exif_rotated_and_heic_copies_give_the_upright_box(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    copy_samples(root, ["obama.jpg"])
    save_rotated_with_exif(root / "obama.jpg", root / "sideways.jpg")
    with Image.open(root / "obama.jpg") as upright:
        pillow_heif.from_pillow(upright).save(root / "obama.heic", quality=90)
    with Image.open(root / "sideways.jpg") as stored:
        assert stored.size == (1137, 910)  # as stored: landscape
    await register_and_claim(hog_queue, ["obama.jpg", "sideways.jpg", "obama.heic"], "job-a")

    run = await run_detector(dsn, "job-a", root)

    assert run.returncode == 0, run.stderr
    assert await boxes(hog_queue, "obama.jpg") == [OBAMA_BOX]
    assert await boxes(hog_queue, "sideways.jpg") == [OBAMA_BOX]  # display coordinates
    [heic_box] = await boxes(hog_queue, "obama.heic")
    assert max(abs(a - b) for a, b in zip(heic_box, OBAMA_BOX, strict=True)) <= 3
    sizes = await db.fetch(
        "SELECT i.path, d.original_width, d.original_height FROM facescan.detections d"
        " JOIN facescan.images i ON i.id = d.image_id"
    )
    assert {r["path"]: (r[1], r[2]) for r in sizes} == {
        "obama.jpg": (910, 1137),
        "sideways.jpg": (910, 1137),  # as displayed, not as stored
        "obama.heic": (910, 1137),
    }


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (top, right, bottom, left) boxes."""
    top, right = max(a[0], b[0]), min(a[1], b[1])
    bottom, left = min(a[2], b[2]), max(a[3], b[3])
    inter = max(0.0, bottom - top) * max(0.0, right - left)

    def area(box: tuple[float, ...]) -> float:
        return (box[2] - box[0]) * (box[1] - box[3])

    return inter / (area(a) + area(b) - inter)


async def test_large_photo_is_detected_capped_and_its_box_reported_in_original_pixels(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    factor = 3000 / 1137
    with Image.open(SAMPLES / "obama.jpg") as photo:
        large = photo.resize((round(910 * factor), 3000), Image.Resampling.LANCZOS)
    large.save(root / "obama_large.jpg", quality=90)
    await register_and_claim(hog_queue, ["obama_large.jpg"], "job-a")

    run = await run_detector(dsn, "job-a", root)  # the library's max dimension: 1280

    assert run.returncode == 0, run.stderr
    [box] = await boxes(hog_queue, "obama_large.jpg")
    expected = tuple(v * factor for v in OBAMA_BOX)
    # HOG's window is quantised per pyramid level: found at 1280 px instead of 1137 px,
    # the box moves by a few percent of its size, no more
    assert iou(box, expected) > 0.7, (box, expected)
    assert box[1] > 1280  # original pixels, not the 1280 px the detector saw
    image = await hog_queue.image(LIB, "obama_large.jpg")
    assert (image["original_width"], image["original_height"]) == (2401, 3000)
    assert await db.fetchval("SELECT max_dimension FROM facescan.detections") == 1280


async def test_the_detector_caps_images_at_the_library_s_max_dimension(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    """The max dimension is the library's (a FaceScan's maxDimension, `scan
    --max-dimension`): set in the library row, it reaches the detector with each image."""
    await hog_queue.ensure_library(LIB, LibraryPolicy(max_dimension=400))
    copy_samples(root, ["obama.jpg"])
    await register_and_claim(hog_queue, ["obama.jpg"], "job-a")

    run = await run_detector(dsn, "job-a", root)

    assert run.returncode == 0, run.stderr
    assert await db.fetchval("SELECT max_dimension FROM facescan.detections") == 400
    [box] = await boxes(hog_queue, "obama.jpg")
    assert iou(box, OBAMA_BOX) > 0.5, box  # found at 400 px, in original pixels


async def test_detecting_an_image_again_replaces_its_faces_never_duplicates_them(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    paths = copy_samples(root, ["group_t1.jpg", "cameraman.png"])
    await register_and_claim(hog_queue, paths, "job-first")
    first = await run(detector_settings("job-first", root), DatabaseSettings(dsn=SecretStr(dsn)))
    assert (first.done, first.faces, first.exit_code) == (2, 6, 0)
    before = await face_counts(db)
    first_ids = {r["id"] for r in await db.fetch("SELECT id FROM facescan.faces")}

    assert await hog_queue.rescan(LIB, only_degraded=False) == 2
    claimed = await hog_queue.claim(
        LIB, "job-again", step=0, size_class=UNKNOWN_SIZE, limit=10, lease_seconds=120
    )
    assert len(claimed) == 2
    again = await run(detector_settings("job-again", root), DatabaseSettings(dsn=SecretStr(dsn)))

    assert (again.done, again.faces) == (2, 6)
    assert await face_counts(db) == before == {"group_t1.jpg": 6, "cameraman.png": 0}
    assert first_ids.isdisjoint(r["id"] for r in await db.fetch("SELECT id FROM facescan.faces"))
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 2
    assert (await hog_queue.status(LIB)).faces == 6
    workers = await db.fetch("SELECT DISTINCT worker FROM facescan.detections")
    assert [r["worker"] for r in workers] == ["job-again"]
