"""`facescan scan` end to end: the real CLI on real photographs, against a real database."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from tests.e2e.local.support import (
    HOG_FACES,
    OBAMA_BOX,
    SAMPLES,
    copy_samples,
    duplicated_faces,
    facescan,
    fetch,
    last_json,
)


def test_scan_finds_every_face_and_a_second_scan_redoes_nothing(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library)

    first = facescan("scan", library, "--json", "--workers", "2", dsn=dsn)
    assert first.returncode == 0, first.stderr
    summary = last_json(first.stdout)
    assert {k: summary[k] for k in ("images", "done", "faces", "retrying", "dead")} == {
        "images": 6,
        "done": 6,
        "faces": 11,
        "retrying": 0,
        "dead": 0,
    }
    assert summary["degraded"] == 0
    assert summary["by_error_type"] == {}
    assert summary["registered"] == 6
    assert (summary["pending"], summary["leased"]) == (0, 0)
    assert summary["memory_enforcement"].startswith("cgroup")
    assert summary["libraries"][str(library)]["faces"] == 11

    per_image = {
        r["path"]: r["face_count"]
        for r in fetch(
            dsn,
            "SELECT i.path, d.face_count FROM facescan.detections d "
            "JOIN facescan.images i ON i.id = d.image_id",
        )
    }
    assert per_image == HOG_FACES
    assert duplicated_faces(dsn) == []
    assert fetch(dsn, "SELECT * FROM facescan.failures") == []

    faces = facescan("faces", library / "obama.jpg", "--json", dsn=dsn)
    assert faces.returncode == 0, faces.stderr
    obama = last_json(faces.stdout)
    assert obama["state"] == "done"
    assert (obama["model"], obama["scale"]) == ("hog", 1.0)
    assert (obama["width"], obama["height"]) == (910, 1137)
    assert [(f["top"], f["right"], f["bottom"], f["left"]) for f in obama["faces"]] == [OBAMA_BOX]

    detected = fetch(dsn, "SELECT image_id, detected_at FROM facescan.detections ORDER BY 1")
    attempts = fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0]
    assert attempts == 6

    again = facescan("scan", library, "--json", "--workers", "2", dsn=dsn)
    assert again.returncode == 0, again.stderr
    resumed = last_json(again.stdout)
    assert resumed["registered"] == 0
    assert (resumed["done"], resumed["faces"]) == (6, 11)
    assert fetch(dsn, "SELECT image_id, detected_at FROM facescan.detections ORDER BY 1") == (
        detected
    )
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == attempts


def test_new_files_are_picked_up_by_the_next_scan(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    assert facescan("scan", library, "--json", dsn=dsn).returncode == 0
    copy_samples(library, ["biden.jpg"])
    result = facescan("scan", library, "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["registered"], summary["images"], summary["done"]) == (1, 2, 2)
    assert fetch(dsn, "SELECT count(*) FROM facescan.attempts")[0][0] == 2


def test_bad_files_are_listed_as_failures_and_good_ones_done(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "biden.jpg"])
    whole = (SAMPLES / "group_t1.jpg").read_bytes()
    (library / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (library / "empty.jpg").write_bytes(b"")
    (library / "text.jpg").write_text("this is not a photograph\n")
    (library / "deleted-since.jpg").write_bytes(whole)  # registered, then deleted
    assert facescan("register", library, dsn=dsn).returncode == 0
    (library / "deleted-since.jpg").unlink()

    result = facescan("scan", library, "--json", "--workers", "2", dsn=dsn)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["images"], summary["done"], summary["faces"]) == (6, 2, 2)
    assert (summary["retrying"], summary["dead"]) == (4, 0)
    assert summary["by_error_type"] == {"decode": 3, "missing": 1}

    listed = facescan("failures", "--json", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    rows = last_json(listed.stdout)["failures"]
    assert {Path(r["path"]).name: r["error_type"] for r in rows} == {
        "deleted-since.jpg": "missing",
        "empty.jpg": "decode",
        "text.jpg": "decode",
        "truncated.jpg": "decode",
    }
    for row in rows:
        assert row["path"] == str(library / Path(row["path"]).name)
        assert row["library"] == str(library)
        assert row["attempts"] == 1
        assert row["dead"] is False
        assert row["next_retry_at"] is not None
        assert Path(row["path"]).name in row["last_error"]

    only_missing = facescan("failures", "--type", "missing", "--json", dsn=dsn)
    assert [Path(r["path"]).name for r in last_json(only_missing.stdout)["failures"]] == [
        "deleted-since.jpg"
    ]
    done = fetch(dsn, "SELECT path FROM facescan.images WHERE state = 'done' ORDER BY path")
    assert [r["path"] for r in done] == ["biden.jpg", "obama.jpg"]

    text = facescan("faces", library / "text.jpg", dsn=dsn)
    assert text.returncode == 0
    assert "no result yet" in text.stdout


def test_failures_show_local_times_to_a_person_and_utc_to_a_program(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    (library / "text.jpg").write_text("this is not a photograph\n")
    assert facescan("scan", library, dsn=dsn).returncode == 0

    as_json = last_json(facescan("failures", "--json", dsn=dsn).stdout)["failures"]
    as_text = facescan("failures", dsn=dsn).stdout.strip().splitlines()
    assert len(as_json) == len(as_text) == 1
    path, error_type, attempts, when, _ = as_text[0].split("\t")
    assert (Path(path).name, error_type, attempts) == ("text.jpg", "decode", "1 attempt")
    retry_at = datetime.fromisoformat(as_json[0]["next_retry_at"])
    assert retry_at.utcoffset() == timedelta(0)
    assert when == f"retry at {retry_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}"


def test_a_scan_without_a_terminal_prints_progress_lines_and_a_plain_summary(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "biden.jpg", "cameraman.png"])
    result = facescan(
        "scan", library, "--workers", "1", "--batch-size", "1", "--progress-every", "0.1", dsn=dsn
    )
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, result.stderr
    assert all("images/s" in line and " left" in line for line in progress)
    assert progress[-1].startswith("progress: 3/3 finished, 3 done, 2 faces, 0 in progress")
    assert result.stdout.splitlines() == [
        f"{library / 'biden.jpg'}: 1 face",
        f"{library / 'cameraman.png'}: 0 faces",
        f"{library / 'obama.jpg'}: 1 face",
        "3 images: 3 done (2 faces, 0 degraded), 0 in progress, 0 pending (0 retrying), 0 dead",
        result.stdout.splitlines()[-1],
    ]
    assert result.stdout.splitlines()[-1].startswith("memory limits: ")

    quiet = facescan("scan", library, "--progress-every", "0", dsn=dsn)
    assert "progress: " not in quiet.stderr
