"""The FAISS cache on its own: a ``VectorCache`` over a real library's database and folder,
driven only by its explicit calls (load, catch up, save, read, rebuild by size)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import cli

from imgindex.cache import VectorCache
from imgindex.db import Connection, Engine, changes, images
from imgindex.db.engine import make_engine
from imgindex.library import Library
from imgindex.vindex import VectorIndex, index_files

DIM = 192  # the thumbnail model's
FLAT_MAX = 300  # the writer's index is IVF from this many vectors on
FILE = {"root_id": 1, "size": 1, "mtime_ns": 1, "updated_at": 0.0}  # in a folder that is not there


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), DIM))
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add(engine: Engine, x: np.ndarray, tag: str) -> list[int]:
    """Indexed rows with these vectors (paths ``/synthetic/<tag>-<i>.jpg``); their ids."""
    with engine.begin() as conn:
        return [
            images.insert_indexed(
                conn,
                {"path": f"/synthetic/{tag}-{i}.jpg", **FILE},
                "thumbnail",
                v,
            )
            for i, v in enumerate(x)
        ]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """An empty thumbnail-model library (its id and schema made by `init`)."""
    data = tmp_path / "data"
    (tmp_path / "photos").mkdir()
    cli(data, "init", tmp_path / "photos", "--model", "thumbnail")
    return data


@pytest.fixture()
def engine(data: Path) -> Iterator[Engine]:
    engine = make_engine(data / "imgindex.db")
    yield engine
    engine.dispose()


def nearest(q: np.ndarray) -> Callable[[Connection, VectorIndex], tuple[int, int]]:
    """A ``read`` callback: the index size and the id nearest ``q``."""

    def run(_conn: Connection, vi: VectorIndex) -> tuple[int, int]:
        _scores, ids = vi.search(q, 1)
        return vi.size, int(ids[0][0])

    return run


def test_load_catch_up_save_and_read_round_trip(data, engine):
    """A writer's cache past ``flat_max`` builds IVF and saves it on load, replays its
    commits on ``catch_up`` and writes them on ``save``; a reader's cache maps the file and
    overlays what was not saved yet. No meta key is written for the threshold."""
    ids = add(engine, clustered(600, 1), "a")
    writer = VectorCache(data, DIM, engine, writes=True, flat_max=FLAT_MAX)
    assert not writer.loaded and list(index_files(data)) == []  # nothing happens on its own
    vi = writer.load()
    assert vi.approximate and vi.kind.startswith("ivf") and vi.size == 600
    (saved,) = index_files(data)
    assert saved == (vi.seq, data / f"vectors.{vi.seq}.faiss")

    reader = VectorCache(data, DIM, engine, writes=False)
    got = reader.current()
    assert got.read_only and got.approximate and got.base_seq == vi.seq and got.size == 600

    far = -clustered(20, 2)  # far from everything else
    with engine.begin() as conn:
        images.delete_images(conn, ids[:50])
    new = add(engine, far, "b")
    writer.catch_up()
    assert writer.index.size == 570 and list(index_files(data)) == [saved]  # not saved yet
    assert reader.read(nearest(far[0])) == (570, new[0])  # the overlay, in one snapshot

    writer.save()
    ((seq, _),) = index_files(data)
    assert seq == writer.index.seq > saved[0]
    with engine.connect() as conn:
        assert (
            len(changes.logged_since(conn, changes.LogPosition(0))) == 0
        )  # the saved changes left the log
    reader.catch_up()  # its file is gone: maps the new one
    got = reader.current()
    assert got.read_only and got.base_seq == seq and got.size == 570
    with sqlite3.connect(data / "imgindex.db") as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM meta")]
    assert not [k for k in keys if "flat" in k]


def test_the_kind_follows_the_constructors_threshold(data, engine):
    """The same library: exact under the default threshold, IVF once a cache with a lower one
    rebuilds it; a reader without a usable file searches an exact index in memory."""
    add(engine, clustered(400, 3), "a")
    assert not VectorCache(data, DIM, engine, writes=True).load().approximate
    writer = VectorCache(data, DIM, engine, writes=True, flat_max=FLAT_MAX)
    assert not writer.load().approximate  # the saved flat file, as it is
    assert writer.maybe_rebuild() and writer.index.approximate
    assert not writer.maybe_rebuild()  # the size calls for nothing else
    for _, path in index_files(data):
        path.unlink()
    reader = VectorCache(data, DIM, engine, writes=False, flat_max=FLAT_MAX)
    got = reader.current()
    assert not got.read_only and not got.approximate and got.size == 400
    assert list(index_files(data)) == []  # readers never write the cache


def test_a_library_holding_the_old_threshold_key_ignores_it(data):
    """Tests of earlier versions wrote ``index.flat_max`` into meta; such a library opens and
    works, its index of the kind ``Library.open(flat_max=...)`` says."""
    with Library.open(data) as lib:
        add(lib.engine, clustered(120, 4), "a")
    with sqlite3.connect(data / "imgindex.db") as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('index.flat_max', '10')")
    with Library.open(data, write=True) as lib:
        assert lib.cache.load().kind == "flat"
        assert lib.status()["index_kind"] == "flat"
    with Library.open(data, write=True, flat_max=100) as lib:
        assert lib.cache.maybe_rebuild() and lib.status()["index_kind"].startswith("ivf")
    with Library.open(data) as lib:
        x = clustered(120, 4)
        assert lib.search(x[7], 1)[0].path == "/synthetic/a-7.jpg"
