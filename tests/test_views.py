"""Cluster views (`imgindex clusters export`, the daemon's `view_dir`): real files, real
symlinks and copies, a real daemon subprocess."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, settled, wait_for
from helpers import cli, cli_json, query
from imaging import draw, make_photos

from imgindex.views import MANIFEST, folder_name, numbered

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

ODD_NAMES = ["café photo ü 写真.jpg", 'it\'s a "quoted" one.jpg', "-leading dash.jpg", "a\nb.jpg"]


def members(data: Path) -> set[tuple[int, str]]:
    """(cluster id, path) of every clustered image, as the database has them."""
    rows = query(
        data,
        "SELECT cluster_id, path FROM images WHERE status = 'indexed' AND cluster_id IS NOT NULL",
    )
    return {(cid, path) for cid, path in rows}


def entries(view: Path) -> dict[str, Path]:
    """``{"folder/name": path}`` of everything in the view's cluster folders."""
    return {f"{d.name}/{f.name}": f for d in view.iterdir() if d.is_dir() for f in d.iterdir()}


def linked(view: Path) -> set[tuple[int, str]]:
    """(cluster id from the folder name, link target) of every symlink in the view."""
    return {
        (int(rel.split("/")[0].split("-")[0]), os.readlink(p))
        for rel, p in entries(view).items()
        if p.is_symlink()
    }


def snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def lib(tmp_path: Path) -> tuple[Path, Path]:
    """Reds in a/ and c/ (both with a red_000.jpg), blues with odd names in b/."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "a", "red", 4)
    make_photos(photos / "c", "red", 1, start=7)[0].rename(photos / "c" / "red_000.jpg")
    make_photos(photos / "b", "blue", 4)
    for i, name in enumerate(ODD_NAMES):
        draw("blue", 20 + i).save(photos / "b" / name, "JPEG")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    return photos.resolve(), data


def test_export_symlinks_one_folder_per_cluster_originals_untouched(lib, tmp_path):
    photos, data = lib
    before = snapshot(photos)
    view = tmp_path / "view"
    out = cli(data, "clusters", "export", view)
    assert out.stderr.startswith("exported 13 images into 2 folders in ")
    want = members(data)
    assert len(want) == 13 and len({cid for cid, _ in want}) == 2
    assert linked(view) == want
    for p in entries(view).values():
        assert p.is_symlink() and os.path.isabs(os.readlink(p))
        assert p.resolve() == Path(os.readlink(p)) and p.resolve().parent.parent == photos
    assert snapshot(photos) == before  # bytes and mtimes
    # a name collision: both red_000.jpg, numbered in path order
    red = next(d for d in view.iterdir() if (d / "red_001.jpg").is_symlink())
    assert os.readlink(red / "red_000.jpg") == str(photos / "a" / "red_000.jpg")
    assert os.readlink(red / "red_000 (2).jpg") == str(photos / "c" / "red_000.jpg")
    # odd names survive as they are
    blue = next(d for d in view.iterdir() if d.is_dir() and d != red)
    for name in ODD_NAMES:
        assert os.readlink(blue / name) == str(photos / "b" / name)
    # again: nothing to do
    again = cli_json(data, "clusters", "export", view)
    assert (again["added"], again["removed"], again["images"]) == (0, 0, 13)
    assert linked(view) == want


def test_export_copies(lib, tmp_path):
    photos, data = lib
    before = snapshot(photos)
    view = tmp_path / "copies"
    cli(data, "clusters", "export", "--copy", view)
    files = entries(view)
    assert len(files) == 13 and not any(p.is_symlink() for p in files.values())
    by_bytes = {p.read_bytes() for p in files.values()}
    assert by_bytes == {b for b, _ in before.values()}
    assert cli_json(data, "clusters", "export", "--copy", view)["added"] == 0
    # a changed original is copied again
    draw("red", 99).save(photos / "a" / "red_003.jpg", "JPEG")
    cli(data, "index")
    report = cli_json(data, "clusters", "export", "--copy", view)
    assert report["added"] == 1 and report["removed"] == 1
    copy = next(p for rel, p in entries(view).items() if rel.endswith("/red_003.jpg"))
    assert copy.read_bytes() == (photos / "a" / "red_003.jpg").read_bytes()
    # switching to links replaces every copy
    report = cli_json(data, "clusters", "export", view)
    assert report["added"] == 13 and report["removed"] == 13
    assert linked(view) == members(data)
    assert snapshot(photos).keys() == before.keys()


def test_hostile_cluster_name_stays_inside_the_view(lib, tmp_path):
    _photos, data = lib
    cid = min(cid for cid, _ in members(data))
    cli(data, "clusters", "name", str(cid), "../../evil")
    view = tmp_path / "out" / "view"
    cli(data, "clusters", "export", view)
    assert (view / f"{cid}-evil").is_dir()
    outside = [p for p in tmp_path.rglob("*evil*") if view not in p.parents]
    assert outside == []


@pytest.mark.parametrize(
    ("title", "folder"),
    [
        ({"name": "../../evil"}, "7-evil"),
        ({"name": "a/b\\c"}, "7-a-b-c"),
        ({"name": "..", "label": "tabby"}, "7"),  # a name wins over the label, even unusable
        ({"name": "\x00\n\t"}, "7"),
        ({"label": "tabby · Egyptian cat"}, "7-tabby-Egyptian-cat"),
        ({"name": "Été 2024 – Côte"}, "7-Été-2024-Côte"),
        ({}, "7"),
        (None, "7"),
    ],
)
def test_folder_names_are_one_safe_component(title, folder):
    assert folder_name(7, title) == folder


def test_long_names_are_capped():
    assert len(folder_name(1, {"name": "x" * 500})) <= 62
    assert len(os.fsencode(folder_name(1, {"name": "写" * 500}))) < 255
    long = "é" * 120 + ".jpg"  # 244 bytes
    assert numbered(long, 1) == long
    assert numbered(long, 12).endswith(" (12).jpg") and len(os.fsencode(numbered(long, 12))) <= 255
    assert numbered("IMG.jpg", 2) == "IMG (2).jpg" and numbered(".hidden", 3) == ".hidden (3)"


def test_reexport_follows_deletions_moves_and_names_and_keeps_foreign_files(lib, tmp_path):
    photos, data = lib
    view = tmp_path / "view"
    cli(data, "clusters", "export", view)
    red_id = next(cid for cid, p in members(data) if p.endswith("/a/red_001.jpg"))
    red = next(d for d in view.iterdir() if d.is_dir() and int(d.name.split("-")[0]) == red_id)
    (view / "notes.txt").write_text("mine")
    (red / "mine.txt").write_text("mine too")
    (photos / "a" / "red_001.jpg").unlink()
    (photos / "a" / "red_002.jpg").rename(photos / "a" / "renamed.jpg")
    cli(data, "index")
    cli(data, "clusters", "name", str(red_id), "Beach 2024")
    report = cli_json(data, "clusters", "export", view)
    assert report["images"] == 12 and report["left"] == 0
    assert linked(view) == members(data)
    renamed = view / f"{red_id}-Beach-2024"
    assert os.readlink(renamed / "renamed.jpg") == str(photos / "a" / "renamed.jpg")
    assert not any("red_001" in rel or "red_002" in rel for rel in entries(view))
    # files imgindex did not make survive; the old folder stays only because of one
    assert (view / "notes.txt").read_text() == "mine"
    assert [p.name for p in red.iterdir()] == ["mine.txt"]
    # a link someone deleted is made again; one replaced by their own file is left alone
    blue = next(d for d in view.iterdir() if d.is_dir() and d not in (red, renamed))
    (blue / "blue_000.jpg").unlink()
    (blue / "blue_001.jpg").unlink()
    (blue / "blue_001.jpg").write_text("not a link")
    report = cli_json(data, "clusters", "export", view)
    assert report["left"] == 1 and report["added"] == 2
    assert (blue / "blue_001.jpg").read_text() == "not a link"
    assert os.readlink(blue / "blue_001 (2).jpg") == str(photos / "b" / "blue_001.jpg")
    assert (blue / "blue_000.jpg").is_symlink()
    assert linked(view) == members(data)
    # the manifest lists only what imgindex made
    made = json.loads((view / MANIFEST).read_text())["entries"]
    assert len(made) == 12 and f"{blue.name}/blue_001.jpg" not in made


def test_a_foreign_folder_is_refused(lib, tmp_path):
    _photos, data = lib
    foreign = tmp_path / "Documents"
    foreign.mkdir()
    (foreign / "taxes.pdf").write_text("keep me")
    out = cli(data, "clusters", "export", foreign, code=1)
    assert out.stderr.startswith("error: ") and MANIFEST in out.stderr
    assert [p.name for p in foreign.iterdir()] == ["taxes.pdf"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cli(data, "clusters", "export", empty)  # an empty folder is fine
    out = cli(data, "clusters", "export", _photos / "view", code=1)
    assert "overlaps the photo folder" in out.stderr and not (_photos / "view").exists()


def test_view_settings_are_checked(lib):
    _photos, data = lib
    assert "absolute path" in cli(data, "config", "view_dir", "relative/dir", code=1).stderr
    assert "symlink or copy" in cli(data, "config", "view_mode", "hardlink", code=1).stderr
    cli(data, "config", "view_mode", "copy")
    cli(data, "config", "view_dir", "")
    current = cli_json(data, "config")
    assert (current["view_dir"], current["view_mode"]) == ("", "copy")


@pytest.mark.daemon
def test_daemon_keeps_the_view_current(tmp_path):
    photos, data, view = tmp_path / "photos", tmp_path / "data", tmp_path / "view"
    make_photos(photos / "seed", "green", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    view.mkdir()
    cli(data, "config", "view_dir", str(view))
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 4) and linked(view) == members(data), 30, d.log_text)
        new = make_photos(photos / "drop", "red", 3) + make_photos(photos / "drop", "blue", 2)
        wait_for(lambda: settled(data, 9) and linked(view) == members(data), 30, d.log_text)
        targets = {t for _, t in linked(view)}
        assert {str(p.resolve()) for p in new} <= targets
        new[0].unlink()
        shutil.rmtree(photos / "seed")
        wait_for(lambda: settled(data, 4) and linked(view) == members(data), 30, d.log_text)
        assert str(new[0].resolve()) not in {t for _, t in linked(view)}
        assert not any(
            d.name.startswith(tuple("0123456789")) and not any(d.iterdir())
            for d in view.iterdir()
            if d.is_dir()
        )  # empty folders go
        cid = min(cid for cid, _ in members(data))
        cli(data, "clusters", "name", str(cid), "Holiday")  # picked up by housekeeping
        wait_for(lambda: (view / f"{cid}-Holiday").is_dir(), 15, d.log_text)
        assert linked(view) == members(data)
        # a view folder that disappears is a warning, not a crash
        cli(data, "config", "view_dir", str(tmp_path / "missing"))
        wait_for(lambda: "was not updated" in d.log_text(), 15, d.log_text)
        assert d.proc.poll() is None
