"""Videos through POST /process over real HTTP: a job's media is told a video by its
content (the kept file has no suffix), its sampled frames' faces come back with their
timestamps and tracks, and a broken video is a typed failure, like the scan's."""

from __future__ import annotations

from pathlib import Path

import pytest

from facescan_api.media_kind import kind_of_file
from tests.integration.api.process_support import (
    Receiver,
    file_route,
    http_server,
    process_server,
    submit,
    wait_settled,
)
from tests.videos import MKV_VP9, make_truncated, make_video

pytestmark = pytest.mark.slow


def test_a_video_by_url_comes_back_with_the_faces_of_its_frames(dsn: str, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "party.mp4")  # 2 s black, then Obama, then Biden, 2 s each
    receiver = Receiver()
    routes = {"/media/4711": file_route(clip), "/hook": receiver.handle}
    with http_server(routes) as base:
        server = process_server(dsn, tmp_path / "media", tmp_path / "server.log")
        try:
            job = {
                "job_id": "v-1",
                "media_id": "4711",
                "media_url": f"{base}/media/4711",
                "callback_url": f"{base}/hook",
            }
            assert submit(server, job).status == 202
            body = wait_settled(server, "v-1")
            receiver.wait(1)
        finally:
            assert server.stop() == 0, server.output()
    assert body["state"] == "done", body
    assert body["kind"] == "video"
    assert body["duration_ms"] == 6000
    assert body["image"] == {"width": 960, "height": 720}
    frames = [face["frame_ms"] for face in body["faces"]]
    assert frames == [2000, 3000, 4000, 5000]  # 5 frames at 1 s ... 5 s: the first black
    tracks = [face["track"] for face in body["faces"]]
    assert tracks[0] == tracks[1] != tracks[2] == tracks[3]  # Obama twice, then Biden
    delivered = receiver.acknowledged()[0].json()
    assert [face["frame_ms"] for face in delivered["faces"]] == frames
    (kept,) = (tmp_path / "media").iterdir()
    assert kind_of_file(kept) == "video"
    assert kept.suffix == ""


def test_a_truncated_video_by_path_fails_typed_and_another_container_is_detected(
    dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    make_truncated(root / "cut.mp4")
    make_video(root / "party.mkv", fmt=MKV_VP9)
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log", roots=(root,))
    try:
        for job_id, name in (("cut", "cut.mp4"), ("mkv", "party.mkv")):
            job = {"job_id": job_id, "media_id": name, "path": str(root / name)}
            assert submit(server, job).status == 202
        cut = wait_settled(server, "cut")
        mkv = wait_settled(server, "mkv")
    finally:
        assert server.stop() == 0, server.output()
    assert cut["state"] == "failed", cut
    assert cut["kind"] == "video"
    assert cut["error"]["type"] == "decode"
    assert cut["faces"] is None
    assert mkv["state"] == "done", mkv
    assert mkv["kind"] == "video"
    assert [face["frame_ms"] for face in mkv["faces"]] == [2000, 3000, 4000, 5000]
