"""``imgindex export``: one row per image as CSV or JSON, and the 2-D map behind its x and y."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, query
from imaging import draw, make_photos

from imgindex import atlas
from imgindex.db.images import indexed_ids
from imgindex.library import Library

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

ODD_NAMES = ('comma, "quoted".jpg', "new\nline.jpg", "ünïcødé 写真.jpg", "semi;colon 'x'.jpg")


@pytest.fixture()
def library(tmp_path: Path) -> tuple[Path, Path]:
    """Red and blue pictures, four with awkward names, and one file that is not an image."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 10)
    make_photos(photos / "blues", "blue", 10, fmt="PNG")
    (photos / "odd").mkdir()
    for i, name in enumerate(ODD_NAMES):
        draw("red", 100 + i).save(photos / "odd" / name, "JPEG")
    (photos / "broken.jpg").write_bytes(b"this is not an image at all")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    return photos, data


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_and_json_have_a_row_per_file_with_the_same_cluster_and_place(library, tmp_path):
    photos, data = library
    out_csv, out_json = tmp_path / "images.csv", tmp_path / "images.json"
    result = cli(data, "export", "--csv", out_csv, "--json", out_json)
    assert f"{out_csv}: 25 images" in result.stderr
    as_csv = {r["path"]: r for r in read_csv(out_csv.read_text(encoding="utf-8"))}
    as_json = {r["path"]: r for r in json.loads(out_json.read_text(encoding="utf-8"))}
    files = {str(p) for p in photos.resolve().rglob("*") if p.is_file()}
    assert set(as_csv) == set(as_json) == files and len(files) == 25

    broken = str(photos.resolve() / "broken.jpg")
    assert as_json[broken]["status"] == as_csv[broken]["status"] == "failed"
    assert "not an image" in as_json[broken]["reason"] == as_csv[broken]["reason"]
    assert as_json[broken]["x"] is None and as_csv[broken]["x"] == as_csv[broken]["y"] == ""
    assert as_json[broken]["cluster_id"] is None and as_csv[broken]["cluster_name"] == ""

    indexed = [p for p in files if p != broken]
    for path in indexed:
        j, c = as_json[path], as_csv[path]
        assert j["status"] == c["status"] == "indexed" and j["reason"] is None
        assert 0.0 <= j["x"] <= 1.0 and 0.0 <= j["y"] <= 1.0
        assert (float(c["x"]), float(c["y"])) == (j["x"], j["y"])
        assert int(c["cluster_id"]) == j["cluster_id"]
        assert c["cluster_name"] == j["cluster_name"] == f"cluster {j['cluster_id']}"
    # the map separates the two families, as their clusters do
    red = np.array([[as_json[p]["x"], as_json[p]["y"]] for p in indexed if "/blues/" not in p])
    blue = np.array([[as_json[p]["x"], as_json[p]["y"]] for p in indexed if "/blues/" in p])
    assert np.linalg.norm(red.mean(0) - blue.mean(0)) > 0.3
    assert len({as_json[p]["cluster_id"] for p in indexed}) == 2


def test_odd_file_names_round_trip_through_a_csv_reader_on_stdout(library):
    photos, data = library
    out = cli(data, "export", "--csv", "-").stdout
    paths = [r["path"] for r in read_csv(out)]
    for name in ODD_NAMES:
        assert str(photos.resolve() / "odd" / name) in paths
    assert len(paths) == 25
    assert json.loads(cli(data, "export", "--json", "-").stdout)[0]["path"] == sorted(paths)[0]


def test_the_map_is_cached_and_recomputed_when_the_library_changes(library):
    photos, data = library
    first = {r["path"]: (r["x"], r["y"]) for r in export_json(data)}
    assert (data / atlas.MAP_NAME).is_file()
    with Library.open(data) as lib:
        assert atlas.library_map(lib).cached
    assert {r["path"]: (r["x"], r["y"]) for r in export_json(data)} == first

    new = make_photos(photos / "blues", "blue", 3, start=50, fmt="PNG")
    cli(data, "index")
    rows = {r["path"]: r for r in export_json(data)}
    assert all(rows[str(p.resolve())]["x"] is not None for p in new)
    with Library.open(data) as lib:
        assert atlas.library_map(lib).cached and len(atlas.library_map(lib).ids) == 27


def export_json(data: Path) -> list[dict]:
    return json.loads(cli(data, "export", "--json", "-").stdout)


def test_the_map_cache_gets_the_mode_other_library_files_get(library, tmp_path):
    """A reader of another user's library finds the cached map readable, as the database and
    the FAISS file are: 0666 less the umask (it was 0600: every such reader recomputed it)."""
    _, data = library
    umask = os.umask(0o022)
    try:
        cli(data, "export", "--csv", tmp_path / "images.csv")
    finally:
        os.umask(umask)
    faiss_file = next(data.glob("vectors.*.faiss"))
    assert (data / atlas.MAP_NAME).stat().st_mode & 0o777 == 0o644
    assert faiss_file.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "images.csv").stat().st_mode & 0o777 == 0o644
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]


def test_big_libraries_lay_out_a_sample_and_place_the_rest_by_neighbours(library):
    _, data = library
    with Library.open(data) as lib, lib.engine.connect() as conn:
        ids = indexed_ids(conn)
        small = atlas.compute(conn, lib.dim, ids, tsne_max=12)
        again = atlas.compute(conn, lib.dim, ids, tsne_max=12)
    paths = dict(query(data, "SELECT id, path FROM images"))
    assert small.method == "tsne+neighbours" and small.sampled == 12
    assert small.ids.tolist() == ids.tolist() and small.xy.shape == (24, 2)
    np.testing.assert_array_equal(small.xy, again.xy)  # deterministic
    assert small.xy.min() >= 0.0 and small.xy.max() == pytest.approx(1.0)
    blue = np.array(["/blues/" in paths[i] for i in small.ids])
    gap = np.linalg.norm(small.xy[blue].mean(0) - small.xy[~blue].mean(0))
    spread = max(small.xy[blue].std(0).max(), small.xy[~blue].std(0).max())
    assert gap > 3 * spread


def test_place_by_neighbours_puts_points_beside_their_nearest_sampled_ones():
    sample = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    where = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    xy = atlas.place_by_neighbours(sample, where, np.array([[10.0, 9.9], [0.1, 0.0]]), k=1)
    np.testing.assert_allclose(xy, [[1.0, 1.0], [0.0, 0.0]])


def test_write_failures_and_missing_targets_are_one_error_line(library, tmp_path, backend):
    _, data = library
    bad = tmp_path / "no-such-folder" / "out.csv"
    result = cli(data, "export", "--csv", bad, code=1)
    assert result.stderr.startswith(f"error: cannot write {bad}:") and not bad.exists()
    assert "--csv FILE" in cli(data, "export", code=1).stderr
    if backend == "sqlite":  # with a database named, any data dir is a reader of that one
        cli(tmp_path / "nowhere", "export", "--csv", tmp_path / "x.csv", code=1)
        assert not (tmp_path / "x.csv").exists()
