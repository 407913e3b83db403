"""``imgindex duplicates resolve`` and ``undo``: the others of each group set aside into a
quarantine folder by a keeper policy, put back byte-identical; nothing deleted. Real files,
the ``thumbnail`` model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers import cli, cli_json
from imaging import draw
from PIL import Image

pytestmark = pytest.mark.usefixtures("backend")  # SQLite, and PostgreSQL (slow)

EXIF_IFD, DATE_ORIGINAL, MAKE, MODEL, ARTIST = 0x8769, 36867, 271, 272, 315


def save_with_exif(img: Image.Image, path: Path, date: str | None, tags: int = 0) -> None:
    exif = Image.Exif()
    for tag in (MAKE, MODEL, ARTIST)[:tags]:
        exif[tag] = "imgindex test"
    if date:
        exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] = date
    img.save(path, quality=90, exif=exif)


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def lib(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An original (large, newest, no metadata), a smaller copy in a sub-folder (oldest date
    taken), a same-size re-encode with the most EXIF tags, an exact copy; two other
    pictures."""
    photos, data, quarantine = tmp_path / "photos", tmp_path / "data", tmp_path / "aside"
    (photos / "trip" / "day2").mkdir(parents=True)
    orig = draw("red", 0, (640, 480))
    orig.save(photos / "trip" / "orig.jpg", quality=95)
    (photos / "zz").mkdir()  # the exact copy's path sorts after the original's
    shutil.copy(photos / "trip" / "orig.jpg", photos / "zz" / "orig_copy.jpg")
    save_with_exif(
        orig.resize((320, 240)), photos / "trip" / "day2" / "small.jpg", "2001:02:03 04:05:06"
    )
    save_with_exif(orig, photos / "tagged.jpg", "2015:01:01 00:00:00", tags=3)
    draw("blue", 0, (640, 480)).save(photos / "blue.jpg")
    draw("green", 3, (640, 480)).save(photos / "green.jpg")
    cli(data, "init", photos, "--model", "thumbnail")
    cli(data, "index")
    return photos, data, quarantine


def group_names(data: Path) -> list[set[str]]:
    return [{Path(m["path"]).name for m in g["members"]} for g in cli_json(data, "duplicates")]


def test_resolve_sets_others_aside_and_undo_puts_them_back_byte_identical(lib):
    photos, data, aside = lib
    before = digests(photos)
    assert group_names(data) == [{"orig.jpg", "orig_copy.jpg", "small.jpg", "tagged.jpg"}]
    indexed = cli_json(data, "status")["indexed"]

    [dry] = cli_json(data, "duplicates", "resolve", "--quarantine", aside, "--dry-run")
    assert dry["dry_run"] and len(dry["moved"]) == 3
    assert digests(photos) == before and not aside.exists()  # a dry run moves nothing

    [done] = cli_json(data, "duplicates", "resolve", "--keep", "largest", "--quarantine", aside)
    assert len(done["moved"]) == 3 and not done["skipped"]
    left = digests(photos)
    kept = {"trip/orig.jpg", "blue.jpg", "green.jpg"}
    # largest: most pixels, then the largest file (the 95-quality original beats the tagged
    # one), then the path
    assert set(left) == kept
    # the others sit in the quarantine folder at their paths relative to the root
    assert digests(aside) == {k: v for k, v in before.items() if k not in kept}
    # the library follows: no groups left, three fewer images
    assert group_names(data) == []
    assert cli_json(data, "status")["indexed"] == indexed - 3

    [back] = cli_json(data, "duplicates", "undo")
    assert back["batch"] == done["batch"] and len(back["moved"]) == 3
    assert digests(photos) == before  # every file back, byte for byte
    assert digests(aside) == {}
    assert cli_json(data, "status")["indexed"] == indexed
    assert group_names(data) == [{"orig.jpg", "orig_copy.jpg", "small.jpg", "tagged.jpg"}]
    # its rows came back with their vectors: searchable without re-embedding
    found = cli_json(data, "similar", photos / "trip" / "day2" / "small.jpg")
    assert Path(found[0]["path"]).parent.name in ("trip", "photos")

    cli(data, "duplicates", "undo", code=1)  # nothing left to undo


@pytest.mark.parametrize(
    ("policy", "keeper"),
    [("largest", "orig.jpg"), ("oldest", "small.jpg"), ("most-metadata", "tagged.jpg")],
)
def test_keeper_policies(lib, policy, keeper):
    photos, data, aside = lib
    cli(data, "duplicates", "resolve", "--keep", policy, "--quarantine", aside)
    remaining = {p.name for p in photos.rglob("*.jpg")}
    assert remaining == {keeper, "blue.jpg", "green.jpg"}


def test_the_policy_is_a_per_library_setting(lib):
    photos, data, aside = lib
    cli(data, "config", "keep", "oldest")
    cli(data, "config", "quarantine", str(aside))
    cli(data, "duplicates", "resolve")
    assert (photos / "trip" / "day2" / "small.jpg").exists()
    assert not (photos / "trip" / "orig.jpg").exists()
    assert (aside / "trip" / "orig.jpg").exists()
    cli(data, "config", "keep", "newest", code=1)


def test_a_quarantine_inside_or_holding_a_root_is_refused(lib):
    photos, data, _ = lib
    before = digests(photos)
    for where in (photos / "aside", photos, photos.parent):
        out = cli(data, "duplicates", "resolve", "--quarantine", where, code=1)
        assert "overlaps root" in out.stderr
    cli(data, "config", "quarantine", str(photos / "x"), code=1)
    assert digests(photos) == before


def test_a_file_in_the_quarantine_is_never_overwritten(lib):
    photos, data, aside = lib
    (aside / "zz").mkdir(parents=True)
    (aside / "zz" / "orig_copy.jpg").write_bytes(b"someone else's file")
    [done] = cli_json(data, "duplicates", "resolve", "--quarantine", aside)
    assert [Path(s["src"]).name for s in done["skipped"]] == ["orig_copy.jpg"]
    assert (aside / "zz" / "orig_copy.jpg").read_bytes() == b"someone else's file"
    assert (photos / "zz" / "orig_copy.jpg").exists()


def test_undo_leaves_a_file_whose_place_is_taken_again(lib):
    photos, data, aside = lib
    cli(data, "duplicates", "resolve", "--quarantine", aside)
    (photos / "zz" / "orig_copy.jpg").write_bytes(b"a new file in its place")
    [back] = cli_json(data, "duplicates", "undo")
    assert [Path(s["src"]).name for s in back["skipped"]] == ["orig_copy.jpg"]
    assert (photos / "zz" / "orig_copy.jpg").read_bytes() == b"a new file in its place"
    assert (aside / "zz" / "orig_copy.jpg").exists()  # still set aside, never deleted
