"""`facescan register` and the `--library` commands: what a cluster user runs to queue a
FaceScan's images and to inspect and requeue them, with the real CLI and database."""

from __future__ import annotations

from pathlib import Path

from facescan_queue.models import DetectionResult, FaceResult
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from facescan_queue.types import ErrorType

from .support import copy_samples, facescan, fetch, last_json

LIBRARY = "photos/family-photos"  # a FaceScan's <namespace>/<name>


def test_register_queues_a_named_library_without_detecting(dsn: str, tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    copy_samples(root / "2024", ["obama.jpg", "astronaut.png"])
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really")

    result = facescan("register", root, "--library", LIBRARY, "--json", dsn=dsn)

    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout) == {
        "library": LIBRARY,
        "root": str(root.resolve()),
        "images": 3,
        "registered": 3,
        "changed": 0,
        "deferred": 0,
        "missing": 0,
        "returned": 0,
        "without_size": 1,
        "unreadable": [],
    }
    rows = fetch(
        dsn,
        "SELECT path, state, width FROM facescan.images WHERE library = $1 ORDER BY path",
        LIBRARY,
    )
    assert [(r["path"], r["state"], r["width"]) for r in rows] == [
        ("2024/astronaut.png", "pending", 512),
        ("2024/obama.jpg", "pending", 910),
        ("broken.jpg", "pending", None),
    ]
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == 0  # nothing ran
    again = facescan("register", root, "--library", LIBRARY, "--json", dsn=dsn)
    assert last_json(again.stdout)["registered"] == 0


async def test_faces_failures_and_requeue_find_images_by_library(dsn: str, tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    copy_samples(root, ["astronaut.png", "obama.jpg"])  # both size class 0
    assert facescan("register", root, "--library", LIBRARY, dsn=dsn).returncode == 0
    # a detector Job of the FaceScan: one image done with a face, one failed
    async with await Queue.connect(DatabaseSettings(dsn=dsn)) as queue:
        await queue.ensure_library(LIBRARY)
        await queue.claim(LIBRARY, "job-1", step=0, size_class=0, limit=2, lease_seconds=60)
        first = await queue.start_next("job-1")
        assert first is not None
        face = FaceResult(10, 60, 70, 5, 0.99, (), None)
        await queue.complete(first.image_id, "job-1", DetectionResult((face,), 1280, 9, 10, 10))
        second = await queue.start_next("job-1")
        assert second is not None
        await queue.fail(second.image_id, "job-1", ErrorType.DECODE, "bad file")
        await queue.release("job-1")

    shown = facescan("faces", first.path, "--library", LIBRARY, "--json", dsn=dsn)
    assert shown.returncode == 0, shown.stderr
    got = last_json(shown.stdout)
    assert (got["path"], got["library"], got["state"]) == (first.path, LIBRARY, "done")
    assert [(f["top"], f["right"], f["bottom"], f["left"]) for f in got["faces"]] == [
        (10, 60, 70, 5)
    ]

    failing = last_json(facescan("failures", "--library", LIBRARY, "--json", dsn=dsn).stdout)
    assert [(r["path"], r["error_type"]) for r in failing["failures"]] == [(second.path, "decode")]
    requeued = facescan("requeue", "--library", LIBRARY, second.path, "--json", dsn=dsn)
    assert requeued.returncode == 0, requeued.stderr
    assert last_json(requeued.stdout) == {"requeued": 1}

    unknown = facescan("failures", "--library", "photos/nope", dsn=dsn)
    assert unknown.returncode == 2
    assert "no library 'photos/nope'" in unknown.stderr
    missing = facescan("faces", "nope.jpg", "--library", LIBRARY, dsn=dsn)
    assert missing.returncode == 2
    assert "not a registered image" in missing.stderr
