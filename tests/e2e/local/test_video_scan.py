"""`facescan scan` of a folder with a video, end to end: the real CLI registers the
video beside the photos, detects its sampled frames, counts it apart and prints the
timestamps of the frames with faces, and `facescan faces VIDEO` shows each frame's
timestamp and faces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.local.support import copy_samples, facescan, last_json
from tests.videos import make_video

pytestmark = pytest.mark.slow


def test_scan_finds_the_faces_of_a_video_s_frames_with_their_timestamps(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg"])
    make_video(library / "party.mp4")  # black 0-2 s, Obama 2-4 s, Biden 4-6 s

    scan = facescan("scan", library, "--json", dsn=dsn)
    assert scan.returncode == 0, scan.stderr
    summary = last_json(scan.stdout)
    assert (summary["images"], summary["done"], summary["faces"]) == (2, 2, 5)
    assert (summary["videos"], summary["videos_done"], summary["video_faces"]) == (1, 1, 4)

    text_scan = facescan("scan", library, dsn=dsn)  # nothing new: the same summary, as text
    assert f"{library / 'party.mp4'}: 4 faces at 2.0 s, 3.0 s, 4.0 s, 5.0 s" in text_scan.stdout
    assert f"{library / 'obama.jpg'}: 1 face\n" in text_scan.stdout

    shown = facescan("faces", library / "party.mp4", "--json", dsn=dsn)
    assert shown.returncode == 0, shown.stderr
    video = last_json(shown.stdout)
    assert (video["kind"], video["state"], video["duration_ms"]) == ("video", "done", 6000)
    assert (video["width"], video["height"], video["tracks"]) == (960, 720, 2)
    assert [(f["timestamp_ms"], len(f["faces"])) for f in video["frames"]] == [
        (1000, 0),
        (2000, 1),
        (3000, 1),
        (4000, 1),
        (5000, 1),
    ]
    assert [(f["frame_ms"], f["track"]) for f in video["faces"]] == [
        (2000, 0),
        (3000, 0),
        (4000, 1),
        (5000, 1),
    ]

    text = facescan("faces", library / "party.mp4", dsn=dsn)
    assert text.returncode == 0, text.stderr
    assert "4 faces in 5 frames, 2 tracks" in text.stdout
    assert "at 2.000 s: 1 face" in text.stdout
    assert "at 1.000 s: 0 faces" in text.stdout

    status = facescan("status", dsn=dsn)
    assert status.returncode == 0, status.stderr
    assert "of them 1 video (1 done, 4 faces in their frames)" in status.stdout
