"""The FAISS cache at scale: kind chosen by size (flat, then IVF), the changes log that catches
files up, and readers that memory-map the file and overlay what the writer has not saved."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, cli_json, synthetic_row
from imaging import make_photos
from sqlalchemy import delete

from imgindex.db.changes import LogPosition, log_position, logged_since
from imgindex.db.images import stack_blobs
from imgindex.db.schema import images
from imgindex.ingest import Ingestor
from imgindex.library import Library
from imgindex.vindex import index_files

DIM = 192  # the thumbnail model's
FLAT_MAX = 500  # the writer's index is IVF from this many vectors on (in production 32,768)


def add_vectors(data: Path, x: np.ndarray) -> np.ndarray:
    """Indexed rows with these vectors (paths in a folder that does not exist); their ids.
    Written on a connection of its own, as another writer's transaction would be."""
    with Library.open(data) as lib, lib.engine.begin() as conn:
        row = synthetic_row(f"/synthetic/{time.monotonic_ns()}-0.jpg", x[0], lib.model)
        first = conn.execute(images.insert().values(**row)).lastrowid
        rows = [synthetic_row(f"/synthetic/{first}-{i}.jpg", v, lib.model) for i, v in enumerate(x)]
        conn.execute(images.insert(), rows[1:])
    return np.arange(first, first + len(x))


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), DIM))
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    """An empty thumbnail-model library (opened for writing by ``open_writer``)."""
    data = tmp_path / "data"
    (tmp_path / "photos").mkdir()
    cli(data, "init", tmp_path / "photos", "--model", "thumbnail")
    return data


def open_writer(data: Path) -> Library:
    """The library opened for writing, its index IVF past ``FLAT_MAX`` vectors."""
    return Library.open(data, write=True, flat_max=FLAT_MAX)


def exact_top(data: Path, q: np.ndarray, k: int) -> list[str]:
    with Library.open(data) as lib, lib.engine.connect() as conn:
        rows = conn.execute(images.select().where(images.c.status == "indexed")).all()
    x = stack_blobs([r.vector for r in rows], DIM)
    return [rows[i].path for i in np.argsort(-(x @ q))[:k]]


@pytest.mark.slow  # trains an IVF index
def test_past_flat_max_the_index_is_ivf_and_still_finds_the_exact_neighbours(synthetic):
    x = clustered(3000, 1)
    add_vectors(synthetic, x)
    with open_writer(synthetic) as lib:
        vi = lib.cache.load()
        assert vi.approximate and vi.kind.startswith("ivf")
    with Library.open(synthetic) as lib:  # a reader: the saved file, memory-mapped
        vi = lib.cache.current()
        assert vi.read_only and vi.approximate and vi.size == 3000
        recall = []
        for q in x[:60]:
            got = lib.search(q, 10)
            want = exact_top(synthetic, q, 10)
            recall.append(len({m.path for m in got} & set(want)) / 10)
            best = got[0]
            assert best.score == pytest.approx(1.0, abs=1e-5)  # re-scored exactly: itself
    assert np.mean(recall) >= 0.95


def test_reader_overlays_what_the_writer_has_not_saved(synthetic):
    ids = add_vectors(synthetic, clustered(1000, 2))
    with open_writer(synthetic) as lib:
        lib.cache.load()  # builds and saves the IVF file
    saved = sorted(index_files(synthetic))
    new = clustered(20, 3) * -1  # far from everything else
    with open_writer(synthetic) as writer:
        writer.cache.load()
        with writer.engine.begin() as conn:
            conn.execute(delete(images).where(images.c.id.in_(ids[:100].tolist())))
        writer.cache.catch_up()
        add_vectors(synthetic, new)  # another connection: the writer's index replays the log
        writer.cache.catch_up()
        assert writer.cache.index.size == 920
        assert sorted(index_files(synthetic)) == saved  # nothing saved yet
        with Library.open(synthetic) as reader:
            vi = reader.cache.current()
            assert vi.read_only and vi.size == 920
            assert not set(ids[:100]) & set(vi.ids().tolist())
            top = reader.search(new[0], 5)
            assert top[0].score == pytest.approx(1.0, abs=1e-5)
            assert [m.path for m in top] == exact_top(synthetic, new[0], 5)
        writer.cache.save()
    ((seq, _),) = index_files(synthetic)
    with Library.open(synthetic) as lib, lib.engine.connect() as conn:
        assert seq == log_position(conn)[0].seq
        assert len(logged_since(conn, LogPosition(0))) == 0  # the saved changes left the log
        assert lib.cache.current().size == 920


def test_a_long_lived_reader_follows_saves_and_log_trims(synthetic):
    add_vectors(synthetic, clustered(800, 4))
    with open_writer(synthetic) as lib:
        lib.cache.load()
    reader = Library.open(synthetic)
    try:
        assert reader.cache.current().size == 800
        fresh = clustered(10, 5) * -1
        add_vectors(synthetic, fresh)
        reader.refresh()  # overlay from the log
        assert reader.cache.current().size == 810
        assert reader.search(fresh[3], 1)[0].score == pytest.approx(1.0, abs=1e-5)
        with open_writer(synthetic) as writer:
            writer.cache.load()  # replays and saves, trimming the log
        add_vectors(synthetic, clustered(5, 6) * -1)
        reader.refresh()  # its file is gone and the log trimmed: maps the newest file
        assert reader.cache.current().size == 815
    finally:
        reader.close()


def test_the_index_is_rebuilt_as_the_library_grows_and_shrinks(synthetic):
    ids = add_vectors(synthetic, clustered(600, 7))
    with open_writer(synthetic) as lib:
        first = lib.cache.load().ivf.nlist
    add_vectors(synthetic, clustered(4000, 8))
    with open_writer(synthetic) as lib:
        assert lib.cache.load().ivf.nlist == first  # replayed, not rebuilt, on open
        assert lib.cache.maybe_rebuild() and lib.cache.index.ivf.nlist >= 2 * first
        with lib.engine.begin() as conn:
            conn.execute(delete(images).where(images.c.id >= int(ids[0]) + 100))
        lib.cache.catch_up()
        assert lib.cache.maybe_rebuild() and not lib.cache.index.approximate  # exact: 100 left
        lib.cache.save()
    with Library.open(synthetic) as lib:
        vi = lib.cache.current()
        assert vi.size == 100 and not vi.approximate


def test_the_daemon_path_keeps_the_file_and_the_log_in_step(tmp_path):
    """Real files through the real ingest: a deleted photo leaves the index via the log."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    files = make_photos(photos, "red", 6) + make_photos(photos, "blue", 6)
    cli(data, "init", photos, "--model", "thumbnail")
    cli(data, "index")
    files[0].unlink()
    with Library.open(data, write=True) as lib:
        ing = Ingestor(lib)
        ing.refresh_paths([str(files[0].resolve())])
        ing.drain(final=False)  # a daemon drain soon after a save: the file may stay behind
        status = cli_json(data, "status")  # a reader, while the writer holds the lock
        assert status["indexed"] == status["index_size"] == 11
        got = cli_json(data, "similar", files[1], "-k", "20")
        assert str(files[0].resolve()) not in {m["path"] for m in got} and len(got) == 10


def test_a_reader_never_writes_the_cache(synthetic):
    """Without a usable file (after an upgrade, a deleted cache) read commands search an index
    built in memory; only a writer saves one, of the kind the size calls for."""
    add_vectors(synthetic, clustered(900, 9))
    with Library.open(synthetic) as reader:
        vi = reader.cache.current()
        assert vi.size == 900 and not vi.read_only
    assert cli_json(synthetic, "status")["index_size"] == 900
    assert list(index_files(synthetic)) == [] and not list(synthetic.glob(".vectors.*"))
    with open_writer(synthetic) as writer:
        writer.cache.load()  # builds and saves it
    ((seq, _),) = index_files(synthetic)
    with Library.open(synthetic) as reader:
        vi = reader.cache.current()
        assert vi.read_only and vi.approximate and vi.base_seq == seq and vi.size == 900


def test_a_reader_searching_in_memory_maps_the_writers_next_file(synthetic):
    add_vectors(synthetic, clustered(300, 10))
    reader = Library.open(synthetic)  # a long-lived one, as the daemon's query service
    try:
        assert not reader.cache.current().read_only  # no file: built in memory
        add_vectors(synthetic, clustered(5, 11))
        reader.refresh()
        vi = reader.cache.current()
        assert vi.size == 305 and not vi.read_only  # replayed
        with open_writer(synthetic) as writer:
            writer.cache.load()  # saves a file
        reader.refresh()
        vi = reader.cache.current()
        assert vi.read_only and vi.size == 305
    finally:
        reader.close()
