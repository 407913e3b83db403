"""Incremental clustering: resumable partial_fit, consolidation, stable ids, k by silhouette."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import cli, cli_json, query, run_process
from imaging import make_photos
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score

from imgindex import cluster

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL


def blobs(n_per: int, centres: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)) * 4
    x = np.concatenate([m + rng.normal(size=(n_per, dim)) for m in means]).astype(np.float32)
    return x, np.repeat(np.arange(centres), n_per)


def test_partial_fit_resumed_from_stored_arrays_matches_one_uninterrupted_model():
    x, _ = blobs(60, 4)
    rng = np.random.default_rng(1)
    x = x[rng.permutation(len(x))]
    init = x[:4].copy()
    live = MiniBatchKMeans(
        n_clusters=4, init=init, n_init=1, batch_size=256, reassignment_ratio=0.0
    )
    state = cluster.ClusterState(np.arange(1, 5), init, np.zeros(4, np.float32))
    for batch in np.array_split(x, 8):
        live.partial_fit(batch)
        # round-trip through plain arrays, as SQLite stores them
        state = cluster.ClusterState(
            state.ids,
            state.centers.copy(),
            state.weights.copy(),
            state.n_steps,
            state.since_reassign,
        )
        state = cluster.partial_fit(state, batch)
    np.testing.assert_allclose(state.weights, live._counts)
    np.testing.assert_allclose(state.centers, live.cluster_centers_, atol=1e-4)
    assert state.n_steps == 8


def test_match_ids_follow_the_images_through_splits_and_merges():
    # old 7 -> new 1 (all), old 9 -> new 0 (most); new 2 is made of leftovers: a fresh id
    overlap = np.array([[0, 50, 0], [40, 0, 5]])
    assert cluster.match_ids(overlap, np.array([7, 9]), next_id=10).tolist() == [9, 7, 10]
    # old 4 split 30/20: the id stays on the larger part
    assert cluster.match_ids(np.array([[20, 30]]), np.array([4]), 5).tolist() == [5, 4]
    # old 3 (10 images) and old 8 (90) merged: the older id stays, however small it was
    assert cluster.match_ids(np.array([[10], [90]]), np.array([3, 8]), 9).tolist() == [3]


def test_names_go_where_most_of_their_images_went():
    overlap = np.array([[20, 30, 0], [0, 40, 0], [0, 0, 5]])
    old, new = np.array([3, 8, 9]), np.array([10, 3, 9])
    # 3 and 8 merged into new 3: 8 brought more, its name wins; 9 is unchanged
    named = cluster.carry_names(overlap, old, new, {3: "Beach", 8: "Sea", 9: "Cats"})
    assert named == {3: "Sea", 9: "Cats"}
    assert cluster.carry_names(overlap, old, new, {3: "Beach"}) == {3: "Beach"}


def test_choose_k_finds_well_separated_groups():
    x, _ = blobs(40, 5)
    k, scores = cluster.choose_k(x)
    assert k == 5 and scores[5] == max(scores.values())


@pytest.mark.slow  # many k-means runs
def test_folder_ordered_arrival_ends_near_batch_kmeans(tmp_path):
    """Families arrive one folder after another; the final clusters are the families."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 50)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    cli(data, "index", "--batch-size", "8")
    members = {
        m["path"]: c["id"]
        for c in cli_json(data, "clusters")
        for m in cli_json(data, "clusters", "show", str(c["id"]))["members"]
    }
    labels = [p.split("/")[-2] for p in members]
    assert normalized_mutual_info_score(labels, list(members.values())) > 0.99


def test_cluster_ids_are_stable_when_the_library_grows(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 30)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    cli(data, "index")

    def ids_by_family() -> dict[str, int]:
        out = {}
        for c in cli_json(data, "clusters"):
            out[c["representatives"][0].split("/")[-2]] = c["id"]
        return out

    before = ids_by_family()
    assert len(set(before.values())) == 3
    for fam in ("red", "blue", "green"):  # +50 %: a full consolidation happens
        make_photos(photos / fam, fam, 15, start=100)
    cli(data, "index")
    assert ids_by_family() == before
    sizes = sorted(c["size"] for c in cli_json(data, "clusters"))
    assert sizes == [45, 45, 45]


def test_auto_k_is_chosen_by_silhouette_and_every_image_is_assigned(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 25)
    cli(data, "init", photos, "--model", "thumbnail")
    cli(data, "index")
    status = cli_json(data, "status")
    assert status["k"] == "auto" and status["clusters"] == 3
    assert sum(c["size"] for c in cli_json(data, "clusters")) == 75


def test_each_batch_updates_the_model_before_the_run_ends(tmp_path):
    """Clusters form and follow during a run (partial_fit per batch), not only at its end."""
    from imgindex.ingest import Ingestor
    from imgindex.library import Library
    from imgindex.scan import walk

    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 40)
    Library.create(data, [photos.resolve()], k="3", model="thumbnail").close()
    steps = []
    with Library.open(data, write=True) as lib:
        ingestor = Ingestor(lib, batch_size=8)
        files = [(1, fs) for fs in walk(photos.resolve())]
        for start in range(0, len(files), 24):  # no drain: only per-batch updates
            ingestor.ingest(files[start : start + 24])
            n_steps = query(data, "SELECT value FROM meta WHERE key = 'cluster_n_steps'")
            steps.append(int(n_steps[0][0]) if n_steps else 0)
            unassigned = query(data, "SELECT count(*) FROM images WHERE cluster_id IS NULL")[0][0]
    assert steps[-1] > steps[2] > 0, steps  # partial_fit ran batch after batch
    assert unassigned == 0  # every image got a cluster as its batch arrived


def _grow(data, k: str, groups: dict[str, tuple[np.ndarray, int]], seed: int) -> None:
    """Add ``count`` photos around each group's centre (rows of an unmounted root, vectors as
    the model would store them), then drain with ``k``, as a run's end does."""
    from imgindex import organize
    from imgindex.db import meta
    from imgindex.db.schema import images
    from imgindex.library import Library

    rng = np.random.default_rng(seed)
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        for name, (centre, count) in groups.items():
            x = centre + 0.1 * rng.normal(size=(count, lib.dim))
            start = 1000 * seed
            conn.execute(
                images.insert(),
                [
                    {
                        "host": lib.host,
                        "path": f"{data.parent}/offline/{name}/{start + i}.jpg",
                        "root_id": 1,
                        "size": 1,
                        "mtime_ns": 1,
                        "status": "indexed",
                        "model": lib.model,
                        "vector": v.astype(np.float32).tobytes(),
                        "updated_at": 0.0,
                    }
                    for i, v in enumerate(x)
                ],
            )
        meta.set_k_setting(conn, k)
        organize.after_drain(conn, k, lib.dim)


def test_ids_and_names_follow_the_photos_when_k_changes_as_the_library_grows(tmp_path):
    """Split: the id (and name) stays on the larger part; merge: the older id stays, and each
    name goes where most of its photos went."""
    from imgindex.library import Library

    data = tmp_path / "data"
    Library.create(data, [tmp_path / "offline"], k="2", model="thumbnail").close()
    with Library.open(data) as lib:
        dim = lib.dim
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, dim)) * 2
    step = rng.normal(size=dim)
    step /= np.linalg.norm(step)
    a1, a2, b1, b2 = a + 3 * step, a - 3 * step, b + 2 * step, b - 2 * step

    def by_group() -> dict[str, tuple[int, str | None]]:
        """group -> (id, name) of the cluster holding its photos (asserting they share one)."""
        out: dict[str, set] = {}
        for c in cli_json(data, "clusters"):
            for m in cli_json(data, "clusters", "show", str(c["id"]))["members"]:
                out.setdefault(m["path"].split("/")[-2], set()).add((c["id"], c["name"]))
        assert all(len(v) == 1 for v in out.values()), out
        return {g: v.pop() for g, v in out.items()}

    _grow(data, "2", {"a1": (a1, 60), "a2": (a2, 40), "b1": (b1, 55), "b2": (b2, 45)}, 1)
    first = by_group()
    id_a, id_b = first["a1"][0], first["b1"][0]
    assert first["a2"][0] == id_a and first["b2"][0] == id_b and id_a != id_b
    cli(data, "clusters", "name", str(id_a), "Alpha")
    cli(data, "clusters", "name", str(id_b), "Beta")

    # more photos, k = 4: each group splits; the larger part keeps the id and the name
    _grow(data, "4", {"a1": (a1, 10), "a2": (a2, 10), "b1": (b1, 10), "b2": (b2, 10)}, 2)
    second = by_group()
    assert second["a1"] == (id_a, "Alpha") and second["b1"] == (id_b, "Beta")
    assert second["a2"][0] > max(id_a, id_b) and second["b2"][0] > max(id_a, id_b)
    assert second["a2"][1] is None
    id_b2 = second["b2"][0]
    cli(data, "clusters", "name", str(id_b2), "Beta two")

    # b2 grows past b1 (same k: every id stays), then k = 3: b1 and b2 merge (the nearest
    # pair). The older id stays, though most photos came from b2; b2's name wins, as most of
    # its photos went there, more than b1's
    _grow(data, "4", {"b2": (b2, 40)}, 3)
    assert by_group() == second | {"b2": (id_b2, "Beta two")}
    _grow(data, "3", {}, 4)
    third = by_group()
    assert third["b1"] == third["b2"] == (id_b, "Beta two")
    assert third["a1"] == (id_a, "Alpha") and third["a2"] == second["a2"]
    names = {c["id"]: c["name"] for c in cli_json(data, "clusters")}
    assert id_b2 not in names and sorted(names) == sorted({id_a, id_b, second["a2"][0]})


def test_tiny_libraries_get_sensible_clusters(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, "red", 1)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "5")
    cli(data, "index")
    assert [c["size"] for c in cli_json(data, "clusters")] == [1]
    make_photos(photos, "blue", 2)
    # a real process, so a library warning would reach its stderr (in-process, Python shows a
    # warning once per process: an earlier test may have used it up)
    result = run_process("--data-dir", data, "index")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "indexing" and len(lines) == 2, result.stderr  # nothing but the progress
    assert lines[1].startswith("3 files: 2 embedded, 0 reused, 0 moved, 1 unchanged, 0 failed")
    sizes = sorted(c["size"] for c in cli_json(data, "clusters"))
    assert sum(sizes) == 3 and 0 not in sizes


def test_groups_of_clusters_nest_each_theme_and_keep_ids_and_names_as_the_library_grows(tmp_path):
    """20 clusters (10 themes of 2 scenes) form a second level: each theme's clusters in one
    group, listed nested by `clusters --tree`, shown by `clusters show --group`; group ids and
    names stay with their photos through a consolidation."""
    from imgindex.library import Library

    data = tmp_path / "data"
    Library.create(data, [tmp_path / "offline"], k="20", model="thumbnail").close()
    with Library.open(data) as lib:
        dim = lib.dim
    rng = np.random.default_rng(0)
    scenes = {}
    for t, theme in enumerate(rng.normal(size=(10, dim)) * 3):
        step = rng.normal(size=dim)
        scenes[f"t{t}s0"] = theme + 1.5 * step / np.linalg.norm(step)
        scenes[f"t{t}s1"] = theme - 1.5 * step / np.linalg.norm(step)
    _grow(data, "20", {s: (c, 20) for s, c in scenes.items()}, 1)

    def themes() -> dict[str, int]:
        """theme -> its group id (asserting each theme sits in one group, alone)."""
        tree = cli_json(data, "clusters", "--list", "--tree")
        out: dict[str, set] = {}
        for g in tree:
            for c in g["clusters"]:
                shown = cli_json(data, "clusters", "show", str(c["id"]))["members"]
                for m in shown:
                    out.setdefault(m["path"].split("/")[-2][:-2], set()).add(g["id"])
        assert all(len(v) == 1 for v in out.values()), out
        found = {t: v.pop() for t, v in out.items()}
        assert len(set(found.values())) == 10 and None not in found.values()
        return found

    before = themes()
    flat = cli_json(data, "clusters")
    assert len(flat) == 20 and all(c["group"] is not None for c in flat)
    group = before["t3"]
    cli(data, "clusters", "name", str(group), "Theme three", "--group")
    shown = cli_json(data, "clusters", "show", str(group), "--group")
    assert shown["name"] == "Theme three" and len(shown["clusters"]) == 2
    assert {m["path"].split("/")[-2] for c in shown["clusters"] for m in c["members"]} == {
        "t3s0",
        "t3s1",
    }
    text = cli(data, "clusters", "--tree").stdout
    assert f"group {group}: Theme three (40 images)" in text
    # the folder view nests group/cluster/photo (the photos' files are not there: an unmounted
    # root, so the links dangle; their names are what counts)
    view = tmp_path / "view"
    cli(data, "clusters", "export", view)
    links = [p.relative_to(view) for p in view.rglob("*.jpg")]
    assert len(links) == 400 and all(len(p.parts) == 3 for p in links)
    in_three = {p.parts[0] for p in links if p.parent.parent.name.startswith(f"g{group}-")}
    assert in_three == {f"g{group}-Theme-three"}
    assert {p.parts[1] for p in links if p.parts[0] == f"g{group}-Theme-three"} == {
        str(c["id"]) for c in shown["clusters"]
    }

    # the report: sheets in group order, each theme's two clusters side by side under their
    # group, and one colour per group on the map
    cli(data, "report", "-o", tmp_path / "r.html", "--thumbnails", "0")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    sheets = json.loads(blob.group(1))["clusters"]
    order = [c["group"]["id"] for c in sheets]
    assert len(order) == 20 and order == [g for g in order[::2] for _ in range(2)]
    assert len(set(order)) == 10
    assert (
        len({(c["group"]["id"], c["color"]) for c in sheets})
        == len({c["color"] for c in sheets})
        == 10
    )
    assert [c["group"]["name"] for c in sheets if c["group"]["id"] == group] == ["Theme three"] * 2

    _grow(data, "20", {s: (c, 5) for s, c in scenes.items()}, 2)  # +25 %: consolidated again
    assert themes() == before
    assert cli_json(data, "clusters", "show", str(group), "--group")["name"] == "Theme three"
    cli(data, "clusters", "show", "999", "--group", code=1)
