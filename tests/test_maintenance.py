"""Writers on several hosts against one PostgreSQL library: one at a time runs the cluster
maintenance (an advisory lock), another takes over when it stops, and counters add up."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, cli_json
from imaging import make_photos

from imgindex.db import clusters, images, meta
from imgindex.library import Library

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow


@pytest.fixture
def shared_library(tmp_path: Path, postgres_url: str) -> str:
    photos = tmp_path / "photos"
    make_photos(photos / "reds", "red", 8)
    make_photos(photos / "blues", "blue", 8)
    cli(
        tmp_path / "a",
        "--database",
        postgres_url,
        "init",
        photos,
        "--model",
        "thumbnail",
        "--k",
        "2",
    )
    cli(tmp_path / "a", "index")
    return postgres_url


def test_one_writer_runs_the_maintenance_and_another_takes_over(
    tmp_path: Path, shared_library: str
) -> None:
    a = Library.open(tmp_path / "a", write=True, purpose="host a")
    b = Library.open(tmp_path / "b", write=True, purpose="host b", database=shared_library)
    try:
        assert a.maintains and not b.maintains
        assert cli_json(tmp_path / "b", "status")["maintenance"].endswith("(host a)")
        assert not b.maintenance.try_take()  # type: ignore[union-attr]
        a.close()
        assert b.maintenance.try_take() and b.maintains  # type: ignore[union-attr]
        assert cli_json(tmp_path / "a", "status")["maintenance"].endswith("(host b)")
    finally:
        a.close()
        b.close()


def test_a_writer_without_the_maintenance_assigns_but_leaves_the_clusters_alone(
    tmp_path: Path, shared_library: str
) -> None:
    holder = Library.open(tmp_path / "a", write=True, purpose="host a")
    other = Library.open(tmp_path / "b", write=True, database=shared_library)
    try:
        assert not other.maintains
        with other.engine.connect() as conn:
            before = clusters.load_state(conn)
        assert before is not None
        folder = tmp_path / "photos" / "reds"
        make_photos(folder, "red", 4, start=100)
        from imgindex.ingest import Ingestor

        Ingestor(other).run([folder])
        with other.engine.connect() as conn:
            after = clusters.load_state(conn)
            new = [r for r in images.clustered_files(conn) if "red_1" in r.path]
        assert after is not None and np.array_equal(after.centers, before.centers)
        assert len(new) == 4 and all(r.cluster_id in set(before.ids) for r in new)
    finally:
        holder.close()
        other.close()


def test_counters_add_up_when_writers_commit_at_once(tmp_path: Path, shared_library: str) -> None:
    lib = Library.open(tmp_path / "a")
    with lib.engine.connect() as conn:
        start = meta.embedded_total(conn)

    def add() -> None:
        for _ in range(40):
            with lib.engine.begin() as conn:
                meta.add_embedded(conn, 1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with lib.engine.connect() as conn:
        assert meta.embedded_total(conn) == start + 160
    lib.close()
