"""Copying a SQLite library into an empty PostgreSQL database (``imgindex.db.transfer``, the
core of ``imgindex migrate --to postgresql://...``): every row, vector, name and setting
arrives; a database that holds anything is refused; an interrupted copy leaves nothing; a copy
that differs is caught."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from helpers import cli, cli_json
from imaging import draw, make_photos
from sqlalchemy import Engine, inspect, make_url, select

from imgindex import hosts
from imgindex.cache import VectorCache
from imgindex.db import changes, clusters, images, meta, migrate, queue, roots
from imgindex.db.engine import make_engine
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, metadata
from imgindex.db.schema import images as images_table
from imgindex.db.transfer import copy_library, last_id, verify
from imgindex.errors import CopyMismatch, DatabaseNotEmpty

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow

CHUNK = 4  # rows per chunk here: every table of the little library takes several


def _write(path: bytes, content: bytes | None = None, seed: int = 0) -> bytes:
    """A JPEG (or ``content``) at the raw file name ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if content is None:
        draw("green", seed, size=(96, 72)).save(os.fsdecode(path), "JPEG")
    else:
        with open(path, "wb") as fh:
            fh.write(content)
    return path


class Library:
    """The library the tests copy: its data dir, and the names they look up."""

    def __init__(self, top: Path) -> None:
        self.data = top / "data"
        base = os.fsencode(top / "photos")
        self.latin1 = os.fsdecode(_write(base + b"/caf\xe9.jpg", seed=1))
        self.undecodable = os.fsdecode(_write(base + b"/\xff\xfe folder/inside.jpg", seed=2))
        self.broken = os.fsdecode(_write(base + b"/bad \xe9.jpg", b"plain text, no picture"))
        make_photos(top / "photos" / "red", "red", 8)
        make_photos(top / "photos" / "blue", "blue", 8)
        cli(self.data, "init", str(top / "photos"), "--model", "thumbnail", "--k", "3")
        cli(self.data, "index")
        self.cluster = cli_json(self.data, "clusters", "--list")[0]["id"]
        cli(self.data, "clusters", "name", str(self.cluster), "Beach 2024")
        cli(self.data, "config", "debounce", "2.5")
        (newest,) = make_photos(top / "photos" / "later", "blue", 1, start=50)
        cli(self.data, "index")  # the newest image, with the largest id...
        newest.unlink()
        cli(self.data, "index")  # ... gone: its id stays used, the copy must not hand it out
        self.engine = make_engine(self.data / "imgindex.db")
        with self.engine.begin() as conn:
            queue.add(conn, [self.undecodable, str(newest)], at=time.time())


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    """A SQLite library made by the CLI, read-only to the tests (each copies it)."""
    lib = Library(tmp_path_factory.mktemp("library"))
    yield lib
    lib.engine.dispose()


@pytest.fixture
def target(postgres_url: str) -> Iterator[Engine]:
    """An engine on a fresh, empty PostgreSQL database."""
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of every table, values as Python reads them (paths as file names)."""
    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(select(table))
            ]
            out[table.name] = sorted(rows, key=repr)
    return out


def _adopted(dump: dict[str, list], host: str) -> dict[str, list]:
    """``_rows`` of a SQLite library as they read once copied by ``host``: the rows and the
    per-host settings of its only host ('') are ``host``'s."""

    def row(name: str, r: tuple) -> tuple:
        if name == "meta":
            return (meta.adopted_key(r[0], host), *r[1:])
        cols = metadata.tables[name].columns.keys()
        return tuple(host if c == "host" and v == "" else v for c, v in zip(cols, r, strict=True))

    return {name: sorted((row(name, r) for r in rows), key=repr) for name, rows in dump.items()}


def test_a_copy_holds_every_row_vector_name_and_setting(library: Library, target: Engine):
    seen: list[tuple[str, int]] = []
    result = copy_library(library.engine, target, lambda t, n: seen.append((t, n)), chunk=CHUNK)

    assert result.ok and result.source == result.target
    source_rows = _rows(library.engine)
    copied = _rows(target)
    # the SQLite library's only host ('') is the copying host's on the shared database
    here = hosts.this_host()
    owners = {
        r[list(metadata.tables[t].columns.keys()).index("host")]
        for t in ("roots", "images", "queue")
        for r in copied[t]
    }
    assert owners == {here}
    assert "cache.vectors." not in str([k for k, _ in copied["meta"] if "@" not in k])
    assert copied == _adopted(source_rows, here)
    assert all(source_rows[t] for t in ("meta", "roots", "images", "clusters", "queue"))
    with library.engine.connect() as src:
        assert result.target.vectors == images.count_indexed(src) == 18  # 16 + 2 odd names
    # progress: each table from 0, images in chunks up to its count, then the verification
    counts = [n for t, n in seen if t == "images"]
    total = len(source_rows["images"])
    assert counts == [*range(0, total, CHUNK), total]
    assert seen[-1] == ("verifying", 0)

    with library.engine.connect() as src, target.connect() as dst:
        for read in (
            images.count_by_status,
            images.count_indexed,
            clusters.titles,
            meta.daemon_settings,
            meta.k_setting,
            meta.model,
            meta.library_id,
            meta.cluster_steps,
            roots.root_paths,
        ):
            assert read(dst) == read(src), read.__name__
        # the same log (its xmin is the reading snapshot's, another server's)
        assert changes.log_position(dst)[0].seq == changes.log_position(src)[0].seq
        assert sorted(queue.entries(dst)) == sorted(queue.entries(src))
        assert clusters.titles(dst)[library.cluster]["name"] == "Beach 2024"
        assert meta.daemon_settings(dst) == {"debounce": "2.5"}
        assert images.find_by_path(dst, library.latin1).status == STATUS_INDEXED
        assert images.find_by_path(dst, library.undecodable).status == STATUS_INDEXED
        broken = images.find_by_path(dst, library.broken)
        assert broken.status == STATUS_FAILED and broken.reason
        assert broken.reason == images.find_by_path(src, library.broken).reason
        dim = meta.dim(src)
        for a, b in zip(images.iter_vectors(src, dim), images.iter_vectors(dst, dim), strict=True):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        used = last_id(src, images_table)
        assert used > max(r.id for r in images.all_files(src))  # the removed newest image's

    with target.begin() as dst:  # ids go on from the source's: none is handed out twice
        row = {"path": "/new.jpg", "root_id": 1, "size": 1, "mtime_ns": 1, "updated_at": 0.0}
        assert images.insert_indexed(dst, row, "thumbnail", np.ones(dim)) == used + 1


def test_the_data_dirs_faiss_file_serves_the_copy_and_catches_up_with_it(
    library: Library, target: Engine
):
    copy_library(library.engine, target)
    with target.connect() as conn:
        dim, held = meta.dim(conn), set(images.indexed_ids(conn).tolist())
    reader = VectorCache(library.data, dim, target, writes=False)
    vi = reader.current()
    assert vi.read_only and vi.path is not None and vi.path.parent == library.data  # not rebuilt
    assert set(vi.ids().tolist()) == held
    gone = min(held)
    with target.begin() as conn:
        images.delete_images(conn, [gone])
    assert set(reader.current().ids().tolist()) == held - {gone}


def test_a_database_holding_a_library_is_refused_and_left_as_it_was(
    library: Library, target: Engine
):
    copy_library(library.engine, target)
    before = _rows(target)
    with pytest.raises(DatabaseNotEmpty) as refused:
        copy_library(library.engine, target)
    name = make_url(str(target.url)).database
    assert f"database {name} " in str(refused.value)
    assert "already holds an imgindex library (19 images)" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert _rows(target) == before
    assert verify(library.engine, target).ok


def test_a_database_with_another_programs_tables_of_our_names_is_refused(
    library: Library, target: Engine
):
    with psycopg.connect(_libpq(target)) as conn:
        conn.execute("CREATE TABLE images (name text)")
        conn.execute("INSERT INTO images VALUES ('theirs')")
    with pytest.raises(DatabaseNotEmpty, match=r"tables named as imgindex's \(images\)"):
        copy_library(library.engine, target)
    with psycopg.connect(_libpq(target)) as conn:
        assert conn.execute("SELECT name FROM images").fetchall() == [("theirs",)]
        assert conn.execute("SELECT to_regclass('meta')").fetchone() == (None,)


def _libpq(engine: Engine, database: str | None = None) -> str:
    """The engine's URL as psycopg takes it (optionally another database on its server)."""
    url = engine.url.set(drivername="postgresql")
    return url.set(database=database or url.database).render_as_string(hide_password=False)


def _stop_in_progress(table: str, n: int) -> None:
    if table == "images" and n >= 2 * CHUNK:
        raise RuntimeError("stopped by the test")


def _kill_the_connection(target: Engine) -> object:
    """A progress callback that terminates the copy's server connection mid-way."""

    def progress(table: str, n: int) -> None:
        if table == "images" and n >= 2 * CHUNK:
            with psycopg.connect(_libpq(target, "postgres")) as c:
                c.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (target.url.database,),
                )

    return progress


@pytest.mark.parametrize("how", ["exception", "connection lost"])
def test_an_interrupted_copy_leaves_the_database_empty_for_another_try(
    library: Library, target: Engine, how: str
):
    progress = _stop_in_progress if how == "exception" else _kill_the_connection(target)
    with pytest.raises(Exception) as stopped:
        copy_library(library.engine, target, progress, chunk=CHUNK)  # type: ignore[arg-type]
    assert not isinstance(stopped.value, (DatabaseNotEmpty, CopyMismatch))
    target.dispose()
    with target.connect() as conn:
        assert inspect(conn).get_table_names() == []
    assert migrate.current_revision(target) is None
    assert copy_library(library.engine, target).ok
    assert verify(library.engine, target).target.rows["images"] == 19


@pytest.mark.parametrize("tamper", ["vector", "path", "cluster name"])
def test_verify_catches_a_copy_that_differs(library: Library, target: Engine, tamper: str):
    copy_library(library.engine, target)
    with target.begin() as conn:
        row = images.find_by_path(conn, library.latin1)
        if tamper == "vector":
            vector = images.blob_to_vector(row.vector).copy()
            vector[0] += 1e-6
            images.update_file(conn, row.id, {"vector": images.vector_to_blob(vector)})
        elif tamper == "path":
            images.update_file(conn, row.id, {"path": library.latin1 + ".renamed"})
        else:
            clusters.set_name(conn, library.cluster, "Mountains")
    with pytest.raises(CopyMismatch) as caught:
        verify(library.engine, target)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("the copy in database ")
    expected = {
        "vector": "vectors: the checksums differ",
        "path": "images: the rows' contents differ",
        "cluster name": "cluster_labels: the rows' contents differ",
    }[tamper]
    assert expected in message
    assert ("vectors" in message) == (tamper == "vector")
