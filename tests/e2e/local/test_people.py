"""`facescan people` end to end: the real CLI on the real sample photographs, as the
README runs it (scan, add a person from one photo, find them in the other), people
listed page by page, renamed and hidden, `scan` matching what it found to the known
people and grouping the faces nobody has into unnamed people, the user naming and
correcting them, `faces` naming each face's person, and every bad input a message and
exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.local.support import copy_samples, facescan, facescan_embedded, last_json

pytestmark = pytest.mark.slow


def _scanned(dsn: str, library: Path, names: list[str] | None = None) -> None:
    copy_samples(library, *([names] if names else []))
    scan = facescan("scan", library, "--json", dsn=dsn)
    assert scan.returncode == 0, scan.stderr


def test_the_readme_adds_obama_from_one_photo_and_finds_him_in_the_other(tmp_path: Path) -> None:
    library, data_dir = tmp_path / "samples", tmp_path / "db"
    copy_samples(library)
    scan = facescan_embedded("scan", library, data_dir=data_dir)
    assert scan.returncode == 0, scan.stderr
    assert "people:" not in scan.stdout  # nobody known yet: nothing to say

    add = facescan_embedded(
        "people", "add", "Barack Obama", library / "obama.jpg", data_dir=data_dir
    )
    assert add.returncode == 0, add.stderr
    assert add.stdout.startswith("added Barack Obama from 1 reference face: 1 other face tagged")
    show = facescan_embedded("people", "show", "Barack Obama", data_dir=data_dir)
    assert show.returncode == 0, show.stderr

    lines = show.stdout.splitlines()
    assert lines[0] == f"Barack Obama ({library}): 2 faces, 0 pending"
    assert lines[1] == f"  {library / 'obama.jpg'}\tmatched\tuser"
    path, status, source, distance = lines[2].strip().split("\t")
    assert (path, status, source) == (str(library / "obama2.jpg"), "matched", "automatic")
    assert 0.3 < float(distance) < 0.4
    assert "biden" not in show.stdout


def test_faces_names_each_faces_person_and_scan_matches_new_photos(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    _scanned(dsn, library, ["obama.jpg", "obama2.jpg", "biden.jpg"])
    assert facescan("people", "add", "Joe Biden", library / "biden.jpg", dsn=dsn).returncode == 0
    assert facescan("people", "add", "Obama", library / "obama.jpg", dsn=dsn).returncode == 0

    faces = facescan("faces", library / "obama2.jpg", "--json", dsn=dsn)
    assert faces.returncode == 0, faces.stderr
    (face,) = last_json(faces.stdout)["faces"]
    assert (face["person"], face["status"]) == ("Obama", "matched")
    assert 0.3 < face["distance"] < 0.4
    text = facescan("faces", library / "obama2.jpg", dsn=dsn)
    assert text.stdout.splitlines()[1].endswith(" Obama (matched)")

    # a new photo of Obama: the next scan detects it and matches it to him
    copy_samples(library, ["group_t1.jpg"])
    (library / "obama2.jpg").rename(library / "again.jpg")
    scan = facescan("scan", library, dsn=dsn)
    assert scan.returncode == 0, scan.stderr
    assert "people: 2 known; 7 new faces matched: 1 tagged, 0 pending, 6 nobody's" in scan.stdout
    again = facescan("faces", library / "again.jpg", "--json", dsn=dsn)
    assert last_json(again.stdout)["faces"][0]["person"] == "Obama"
    nobody = last_json(facescan("faces", library / "group_t1.jpg", "--json", dsn=dsn).stdout)
    assert [f["person"] for f in nobody["faces"]] == [None] * 6
    synced = facescan("people", "sync", "--json", dsn=dsn)
    assert synced.returncode == 0, synced.stderr
    assert last_json(synced.stdout)["considered"] == 0


def test_scan_groups_the_faces_nobody_has_and_the_user_names_and_corrects_them(
    dsn: str, tmp_path: Path
) -> None:
    library = tmp_path / "photos"
    copy_samples(library, ["obama.jpg", "obama2.jpg", "biden.jpg"])
    for copy in ("obama3.jpg", "obama4.jpg"):  # a core face has 3 others near it
        (library / copy).write_bytes((library / "obama.jpg").read_bytes())
    scan = facescan("scan", library, "--json", dsn=dsn)
    assert scan.returncode == 0, scan.stderr
    (clustered,) = last_json(scan.stdout)["clustered"].values()
    assert (clustered["created"], clustered["assigned"], clustered["unnamed"]) == (1, 4, 1)
    assert len(clustered["unassigned"]) == 1  # Biden: one face is nobody's cluster

    listed = last_json(facescan("people", "list", "--json", dsn=dsn).stdout)["people"]
    assert [(p["name"], p["matched"]) for p in listed] == [(None, 4)]
    unnamed = f"unnamed #{listed[0]['id']}"
    assert facescan("people", "rename", unnamed, "Barack Obama", dsn=dsn).returncode == 0
    shown = last_json(facescan("people", "show", "Barack Obama", "--json", dsn=dsn).stdout)
    assert sorted(Path(f["path"]).name for f in shown["faces"]) == [
        "obama.jpg",
        "obama2.jpg",
        "obama3.jpg",
        "obama4.jpg",
    ]
    chosen = next(f["face_id"] for f in shown["faces"] if f["path"].endswith("obama2.jpg"))
    featured = facescan("people", "feature", "Barack Obama", str(chosen), dsn=dsn)
    assert featured.returncode == 0, featured.stderr
    again = last_json(facescan("people", "show", "Barack Obama", "--json", dsn=dsn).stdout)
    assert again["featured_face"] == chosen

    biden = last_json(facescan("faces", library / "biden.jpg", "--json", dsn=dsn).stdout)
    face = str(biden["faces"][0]["face_id"])
    taken = facescan("people", "move", face, "--to", "Barack Obama", "--new", dsn=dsn)
    assert taken.returncode == 2
    assert "already a person called 'Barack Obama'" in taken.stderr
    moved = facescan("people", "move", face, "--to", "Joe Biden", "--new", dsn=dsn)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == "moved 1 face to new person Joe Biden"
    assert (
        last_json(facescan("faces", library / "biden.jpg", "--json", dsn=dsn).stdout)["faces"][0][
            "person"
        ]
        == "Joe Biden"
    )


def test_people_are_listed_page_by_page_renamed_and_hidden(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    _scanned(dsn, library, ["obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.png"])
    for name, photo, *face in (
        ("Barack Obama", "obama.jpg"),
        ("Joe Biden", "biden.jpg"),
        ("Eileen Collins", "astronaut.png", "--face", "1"),
    ):
        added = facescan("people", "add", name, library / photo, *face, dsn=dsn)
        assert added.returncode == 0, added.stderr

    first = last_json(facescan("people", "list", "--limit", "2", "--json", dsn=dsn).stdout)
    assert [(p["name"], p["matched"], p["pending"]) for p in first["people"]] == [
        ("Barack Obama", 2, 0),
        ("Eileen Collins", 1, 0),
    ]
    assert first["next"]
    second = facescan("people", "list", "--limit", "2", "--after", first["next"], "--json", dsn=dsn)
    page = last_json(second.stdout)
    assert [p["name"] for p in page["people"]] == ["Joe Biden"]
    assert page["next"] is None

    assert facescan("people", "rename", "Joe Biden", "Joseph Biden", dsn=dsn).returncode == 0
    assert facescan("people", "hide", "Eileen Collins", dsn=dsn).returncode == 0
    listed = facescan("people", "list", dsn=dsn).stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["Barack Obama", "Joseph Biden"]
    every = last_json(facescan("people", "list", "--all", "--json", dsn=dsn).stdout)
    assert [(p["name"], p["hidden"]) for p in every["people"]] == [
        ("Barack Obama", False),
        ("Eileen Collins", True),
        ("Joseph Biden", False),
    ]
    shown = last_json(facescan("people", "show", "Joseph Biden", "--json", dsn=dsn).stdout)
    assert [(Path(f["path"]).name, f["source"]) for f in shown["faces"]] == [("biden.jpg", "user")]


def test_bad_input_is_a_message_and_exit_2_never_a_traceback(dsn: str, tmp_path: Path) -> None:
    library = tmp_path / "photos"
    _scanned(dsn, library, ["obama.jpg", "obama2.jpg", "group_t1.jpg", "cameraman.png"])
    elsewhere = tmp_path / "elsewhere"
    copy_samples(elsewhere, ["biden.jpg"])
    assert facescan("people", "add", "Barack Obama", library / "obama.jpg", dsn=dsn).returncode == 0

    cases = [
        (("show", "Nobody"), "no person called 'Nobody'"),
        (("add", "Barack Obama", library / "obama2.jpg"), "already a person called"),
        (("add", "  ", library / "obama2.jpg"), "cannot be empty"),
        (("add", "Joe Biden", elsewhere / "biden.jpg"), "run `facescan scan DIR`"),
        (("add", "Crowd", library / "group_t1.jpg"), "has 6 faces: say which"),
        (("add", "Crowd", library / "group_t1.jpg", "--face", "7"), "no face 7"),
        (("add", "Cameraman", library / "cameraman.png"), "no face was found"),
        (("rename", "Barack Obama", ""), "cannot be empty"),
        (("hide", "Nobody"), "no person called"),
        (("list", "--after", "not-a-cursor"), "not a value a listing printed"),
    ]
    for args, message in cases:
        result = facescan("people", *args, dsn=dsn)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert result.stderr.startswith("facescan: "), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    crowd = facescan("people", "add", "Crowd", library / "group_t1.jpg", dsn=dsn)
    assert "  --face 1: top " in crowd.stderr  # the faces to choose from
    # nothing was changed by the refused commands
    listed = last_json(facescan("people", "list", "--json", dsn=dsn).stdout)["people"]
    assert [(p["name"], p["matched"]) for p in listed] == [("Barack Obama", 2)]
