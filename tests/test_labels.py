"""Cluster labels from the model's ImageNet head, and names of the user's own that follow
their cluster through updates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import corpus
from helpers import cli, cli_json
from imaging import make_photos

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL


def _cluster_of(data: Path, path: Path) -> int:
    for c in cli_json(data, "clusters", "--list"):
        members = cli_json(data, "clusters", "show", str(c["id"]))["members"]
        if str(path.resolve()) in {m["path"] for m in members}:
            return c["id"]
    raise AssertionError(f"{path} is in no cluster")


def test_a_name_follows_its_cluster_through_a_consolidation(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    reds = make_photos(photos / "red", "red", 12)
    make_photos(photos / "blue", "blue", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    red = _cluster_of(data, reds[0])
    cli(data, "clusters", "name", str(red), "Beach 2024")
    # the library triples: the next pass consolidates (k-means++ from scratch, ids matched)
    make_photos(photos / "red", "red", 24, start=12)
    make_photos(photos / "blue", "blue", 24, start=12)
    cli(data, "index")
    listing = {c["id"]: c for c in cli_json(data, "clusters", "--list")}
    red_now = _cluster_of(data, reds[0])
    assert listing[red_now]["name"] == "Beach 2024"
    assert [c["name"] for c in listing.values()].count("Beach 2024") == 1
    assert "Beach 2024" in cli(data, "clusters", "--list").stdout
    cli(data, "clusters", "name", str(red_now), "--clear")
    assert cli_json(data, "clusters", "show", str(red_now))["name"] is None


def test_naming_errors_are_one_line(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, "red", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "1")
    cli(data, "index")
    missing = cli(data, "clusters", "name", "99", "x", code=1)
    assert missing.stderr.startswith("error: no cluster 99; existing clusters: 1")
    assert "error: give a NAME" in cli(data, "clusters", "name", "1", code=1).stderr
    assert "cannot be empty" in cli(data, "clusters", "name", "1", "  ", code=1).stderr


@pytest.mark.slow
def test_pets_clusters_are_labelled_by_their_imagenet_classes(tmp_path):
    """The default model's head names the cat cluster with cat classes and the dog cluster
    with dog breeds, kept in `clusters --list --json`."""
    from imgindex.models._imagenet_classes import IMAGENET_CLASSES

    cats = set(IMAGENET_CLASSES[281:286])  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    dogs = set(IMAGENET_CLASSES[151:269])
    data = tmp_path / "data"
    cli(data, "init", corpus("pets"), "--k", "2")
    cli(data, "index")
    labels = [c["label"] for c in cli_json(data, "clusters", "--list")]
    kinds = sorted(
        "cat" if set(lab.split(" · ")) <= cats else "dog" if set(lab.split(" · ")) <= dogs else lab
        for lab in labels
    )
    assert kinds == ["cat", "dog"], labels
