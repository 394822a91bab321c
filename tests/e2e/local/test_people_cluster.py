"""`facescan people cluster|merge|move|remove|undo|suggest` end to end: the real CLI on a
scanned sample library plus a synthetic library's faces written into it, as a user runs
them (face ids from `faces --json` and `people show --json`), and refusals as exit 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.local.support import copy_samples, facescan, fetch, last_json
from tests.integration.people.cluster_support import insert_dataset, small

pytestmark = pytest.mark.slow


def _with_synthetic_faces(dsn: str, library: Path) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await insert_dataset(conn, small(seed=21), "synthetic", library=str(library))
        finally:
            await conn.close()

    asyncio.run(go())


def test_cluster_name_merge_move_remove_undo_and_suggest(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "obama2.jpg", "biden.jpg"])
    assert facescan("scan", library, dsn=dsn).returncode == 0
    _with_synthetic_faces(dsn, library)

    clustered = facescan("people", "cluster", "--json", dsn=dsn)
    assert clustered.returncode == 0, clustered.stderr
    (report,) = last_json(clustered.stdout)["libraries"]
    assert report["mode"] == "incremental"
    assert report["unnamed"] >= 15
    assert {f["path"] for f in report["unassigned"]} >= {"obama.jpg", "biden.jpg"}
    text = facescan("people", "cluster", dsn=dsn).stdout
    assert f"{library} (incremental): " in text
    assert "face " in text.splitlines()[1]

    listed = last_json(facescan("people", "list", "--limit", "100", "--json", dsn=dsn).stdout)
    unnamed = [p for p in listed["people"] if p["name"] is None]
    assert [p["display"] for p in unnamed[:1]] == [f"unnamed #{unnamed[0]['id']}"]
    # two people without a shared photo: one named, then the other merged into it
    a, b = _two_apart(dsn, [p["id"] for p in unnamed])
    assert facescan("people", "rename", f"#{a}", "Alice", dsn=dsn).returncode == 0
    shown = last_json(facescan("people", "show", "Alice", "--json", dsn=dsn).stdout)
    assert shown["id"] == a
    assert all(isinstance(f["face_id"], int) for f in shown["faces"])

    merged = facescan("people", "merge", "Alice", f"unnamed #{b}", dsn=dsn)
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.startswith(f"merged unnamed #{b} into Alice: ")
    undone = facescan("people", "undo", dsn=dsn)
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.startswith(f"undid: merged unnamed #{b} into Alice")

    # a face of a scanned photo, by the id `faces --json` prints
    (obama,) = last_json(facescan("faces", library / "obama.jpg", "--json", dsn=dsn).stdout)[
        "faces"
    ]
    moved = facescan("people", "move", str(obama["face_id"]), "--to", "Alice", dsn=dsn)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == "moved 1 face to Alice"
    again = last_json(facescan("faces", library / "obama.jpg", "--json", dsn=dsn).stdout)
    assert again["faces"][0]["person"] == "Alice"

    removed = facescan("people", "remove", str(obama["face_id"]), dsn=dsn)
    assert removed.returncode == 0, removed.stderr
    twice = facescan("people", "remove", str(obama["face_id"]), dsn=dsn)
    assert twice.returncode == 2
    assert "nobody's" in twice.stderr
    assert "Traceback" not in twice.stderr
    unknown = facescan("people", "move", "987654", "--to", "Alice", dsn=dsn)
    assert unknown.returncode == 2
    assert "no face has id 987654" in unknown.stderr

    suggested = last_json(facescan("people", "suggest", "Alice", "--json", dsn=dsn).stdout)
    distances = [s["distance"] for s in suggested["suggestions"]]
    assert distances
    assert distances == sorted(distances)

    full = facescan("people", "cluster", "--full", "--json", dsn=dsn)
    assert full.returncode == 0, full.stderr
    assert last_json(full.stdout)["libraries"][0]["kept"] >= 10
    assert fetch(dsn, "SELECT name FROM facescan.people WHERE id = $1", a)[0][0] == "Alice"

    for _ in range(3):  # the removal, the move; the merge was undone already
        facescan("people", "undo", dsn=dsn)
    nothing = facescan("people", "undo", dsn=dsn)
    assert nothing.returncode == 2
    assert "nothing to undo" in nothing.stderr


def _two_apart(dsn: str, people: list[int]) -> tuple[int, int]:
    shared = {
        (r[0], r[1])
        for r in fetch(
            dsn,
            "SELECT a.person_id, b.person_id FROM facescan.face_people a "
            "JOIN facescan.face_people b ON b.image_id = a.image_id "
            "WHERE a.person_id IS NOT NULL AND b.person_id IS NOT NULL",
        )
    }
    for a in people:
        for b in people:
            if a != b and (a, b) not in shared:
                return a, b
    raise AssertionError("every two people share a photo")
