"""A library written by an earlier version opens and works (``tests/data/library-0006``).

The fixture was made by ``tests/data/make_library_fixture.py`` at commit 4d6d9ad (revision
0006). Its database names its photos by absolute paths under a folder that no longer exists
(``/tmp/imgindex-library-0006/photos``); a copy of the photos comes with it.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import cli, cli_json

FIXTURE = Path(__file__).parent / "data" / "library-0006"


@pytest.fixture()
def old(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``(photos, data, root)``: a copy of the fixture, and the root its database names."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    data = tmp_path / "old" / "data"
    with sqlite3.connect(data / "imgindex.db") as conn:
        (root,) = conn.execute("SELECT path FROM roots").fetchone()
    return tmp_path / "old" / "photos", data, Path(root)


def stored_path(data: Path, name: str) -> str:
    with sqlite3.connect(data / "imgindex.db") as conn:
        (path,) = conn.execute(
            "SELECT path FROM images WHERE path LIKE ? AND status = 'indexed'", (f"%/{name}",)
        ).fetchone()
    return path


def test_status_clusters_and_check_read_it_as_it_was_written(old):
    _photos, data, _root = old
    s = cli_json(data, "status")
    assert (s["model"], s["dim"], s["k"]) == ("thumbnail", 192, "auto")
    assert (s["indexed"], s["failed"], s["pending"], s["index_size"]) == (12, 1, 0, 12)
    assert s["clusters"] == 3
    clusters = cli_json(data, "clusters", "--list")
    assert sorted(c["size"] for c in clusters) == [4, 4, 4]
    assert {c["id"]: c["name"] for c in clusters}[1] == "First cluster"
    for c in clusters:  # each cluster is one colour family, as when it was made
        families = {Path(p).name.split("_")[0] for p in c["representatives"]}
        assert len(families) == 1, c
    checked = cli_json(data, "check")
    assert checked["ok"] and checked["problems"] == [] and checked["indexed"] == 12


def test_similar_finds_a_stored_photo_through_the_old_faiss_file(old):
    photos, data, root = old
    stored = stored_path(data, "red_001.jpg")
    copy = photos / Path(stored).relative_to(root)  # the same bytes, outside the library
    top = cli_json(data, "similar", copy, "-k", "4")
    assert top[0]["path"] == stored and top[0]["score"] > 0.999
    assert [Path(m["path"]).parent.name for m in top] == ["red"] * 4


def test_an_index_pass_keeps_the_rows_of_its_missing_root_and_adds_a_new_one(old, tmp_path):
    photos, data, _root = old
    result = cli(data, "index")
    assert "unavailable" in result.stderr
    assert cli_json(data, "status")["indexed"] == 12  # nothing removed
    cli(data, "init", photos)  # the photos where they are now: a second root
    cli(data, "index")
    s = cli_json(data, "status")
    assert (s["indexed"], s["failed"], s["index_size"]) == (24, 2, 24)
    assert cli_json(data, "check")["ok"]


def test_its_report_plots_the_scores_k_was_chosen_by(old, tmp_path):
    _photos, data, _root = old
    with sqlite3.connect(data / "imgindex.db") as conn:
        (raw,) = conn.execute("SELECT value FROM meta WHERE key = 'cluster_auto_k'").fetchone()
    chosen = json.loads(raw)
    out = tmp_path / "report.html"
    cli(data, "report", "-o", out)
    text = out.read_text(encoding="utf-8")
    plotted = [int(k) for k in re.findall(r'<circle [^>]*data-k="(\d+)"', text)]
    assert plotted == sorted(int(k) for k in chosen["silhouette"])
    assert f"k = {chosen['k']} (chosen)" in text
    assert "scored when k was chosen automatically, at 12 images" in text
