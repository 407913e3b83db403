"""The storage layer (``imgindex.db``) on both backends: a SQLite file and a real PostgreSQL
server (``tests/pg.py``), each built from empty by the same Alembic migrations.

The changes log under concurrent writers (a sequence value commits out of order across
transactions) is tested in ``tests/test_changes_log.py``. Not here yet (issue 11): the CLI and
daemon on PostgreSQL, the decode workers' plain connections (``engine.worker_connection``,
SQLite only)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError

from imgindex import names
from imgindex.db import changes, clusters, images, meta, migrate, queue, roots
from imgindex.db.changes import LogPosition
from imgindex.db.dialect import integrity_problems, last_autoincrement_id
from imgindex.db.engine import make_engine, snapshot, worker_connection
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, metadata
from imgindex.errors import LibraryNotFound

BIG = 2**40 + 7  # past a 32-bit integer: sizes, nanosecond times, ids
DIM = 4


def _db(engine: Engine) -> Path | str:
    """What ``make_engine`` took to make ``engine``: a SQLite file's path, or a server's URL."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return Path(str(url.database))
    return url.render_as_string(hide_password=False)


def _row(path: str, root_id: int, **extra: object) -> dict[str, object]:
    row = {"path": path, "root_id": root_id, "size": BIG, "mtime_ns": BIG, "updated_at": 1.0}
    return row | extra


def _vec(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i % DIM] = i + 1
    return v


def test_migrations_build_the_schema_the_code_queries(engine):
    assert migrate.current_revision(engine) == migrate.SCHEMA_HEAD
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert integrity_problems(conn) == []


def test_migrations_go_down_and_up_again(engine):
    """Downgrading past revision 0004 drops its triggers (and, on PostgreSQL, their function);
    upgrading again puts them back."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    for target, step in (("0003", command.downgrade), ("head", command.upgrade)):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, target)
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/d"))
        images.insert_indexed(conn, _row("/d/a.jpg", rid), "m", _vec(0))
        assert changes.log_head(conn).seq == 1


def test_a_read_only_engine_reads_and_never_writes(engine):
    with engine.begin() as conn:
        meta.set_k_setting(conn, "3")
    reader = make_engine(_db(engine), read_only=True)
    try:
        with reader.connect() as conn:
            assert meta.k_setting(conn) == "3"
            with pytest.raises(DatabaseError):
                meta.set_k_setting(conn, "4")
    finally:
        reader.dispose()


def test_images_round_trip_with_a_name_that_is_not_utf8(engine):
    odd = names.from_bytes(b"/photos/caf\xe9/\xff.jpg")  # Latin-1 folder and file names
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/photos"))
        assert roots.add_root(conn, Path("/photos")) == rid
        low = _row("/photos/a.jpg", rid, phash=-(2**63))
        first = images.insert_indexed(conn, low, "m", _vec(1))
        second = images.insert_indexed(conn, _row(odd, rid, phash=2**63 - 1), "m", _vec(2))
        images.insert_unindexed(conn, _row("/photos/bad.jpg", rid), STATUS_FAILED, "x", None)
    with snapshot(engine) as conn:
        assert roots.root_paths(conn) == [Path("/photos")]
        row = images.find_by_path(conn, odd)
        assert (row.id, row.path, row.size, row.mtime_ns) == (second, odd, BIG, BIG)
        assert row.phash == 2**63 - 1 and images.find_by_id(conn, first).phash == -(2**63)
        assert images.count_by_status(conn) == {STATUS_INDEXED: 2, STATUS_FAILED: 1}
        assert images.paths_at_or_under(conn, names.from_bytes(b"/photos/caf\xe9")) == [odd]
        assert [r.path for r in images.all_files(conn)] == sorted(
            ["/photos/a.jpg", "/photos/bad.jpg", odd], key=names.to_bytes
        )
        ids, vecs = images.vectors_for(conn, [first, second], DIM)
        assert ids.tolist() == [first, second] and np.array_equal(vecs, [_vec(1), _vec(2)])


def test_moves_and_deletes_keep_ids_and_write_the_changes_log(engine):
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/p"))
        a = images.insert_indexed(conn, _row("/p/old/a.jpg", rid), "m", _vec(1))
        b = images.insert_indexed(conn, _row("/p/b.jpg", rid), "m", _vec(2))
        head = changes.log_head(conn)
        assert head.seq == 2 and sorted(changes.logged_since(conn, LogPosition(0))) == [a, b]
    with engine.begin() as conn:
        assert images.move_paths(conn, "/p/old", "/p/new", rid) == (1, [])
        images.update_file(conn, a, {"size": 5})  # not the vector: no log row
        assert changes.log_head(conn).seq == head.seq
        images.update_file(conn, a, {"vector": images.vector_to_blob(_vec(3))})
        assert changes.log_head(conn).seq == head.seq + 1
        images.forget_vectors(conn, [b], "gone", retry_after=9.0)
        images.delete_images(conn, [a])
    with engine.begin() as conn:
        assert images.find_by_path(conn, "/p/new/a.jpg") is None
        assert images.due_for_retry(conn, now=10.0) == ["/p/b.jpg"]
        assert sorted(changes.logged_since(conn, head)) == [a, b]
        now, trimmed = changes.log_position(conn)
        assert now.seq == 5 and trimmed == (0, 0)
        changes.trim_log(conn, LogPosition(3, now.xmin), keep_s=0)
        assert changes.log_position(conn)[1] == (3, now.xmin)
        assert last_autoincrement_id(conn, "images") == b


def test_meta_accessors_round_trip(engine):
    with engine.begin() as conn:
        meta.set_model(conn, "thumbnail", 192)
        meta.set_k_setting(conn, "auto")
        assert meta.add_embedded(conn, 3) == 3 and meta.add_embedded(conn, 4) == 7
        meta.set_daemon_setting(conn, "quiet", "2s")
        meta.set_auto_k(conn, meta.AutoK(5, 100, {4: 0.25, 5: 0.5}, 64))
        meta.set_cache_record(conn, "vectors.1.faiss", "{}")
        meta.set_cache_record(conn, "vectors.2.faiss", "{}")
        meta.drop_cache_records_except(conn, "vectors.2.faiss")
    with engine.connect() as conn:
        assert (meta.model(conn), meta.dim(conn)) == ("thumbnail", 192)
        assert meta.k_setting(conn) == "auto"
        assert meta.embedded_total(conn) == 7 and meta.daemon_settings(conn) == {"quiet": "2s"}
        assert meta.auto_k(conn) == meta.AutoK(5, 100, {4: 0.25, 5: 0.5}, 64)
        assert meta.cache_record(conn, "vectors.1.faiss") is None
        assert meta.cache_record(conn, "vectors.2.faiss") == "{}"


def test_queue_upserts_keep_the_first_enqueue_time(engine):
    odd = names.from_bytes(b"/q/\xe9.png")
    with engine.begin() as conn:
        queue.schedule(conn, {"/q/a.png": 5.0, odd: 6.0}, now=1.0)
        queue.schedule(conn, {"/q/a.png": 7.0}, now=2.0)
        queue.add(conn, ["/q/a.png", "/q/b.png"], at=3.0)
    with engine.begin() as conn:
        due = queue.due(conn, now=100.0, limit=10)
        assert [(r.path, r.due_at, r.enqueued_at) for r in due] == [
            ("/q/b.png", 3.0, 3.0),
            (odd, 6.0, 1.0),
            ("/q/a.png", 7.0, 1.0),
        ]
        queue.done(conn, due[:2])
        assert queue.count(conn) == 1 and queue.next_due(conn) == 7.0


def test_cluster_state_labels_and_assignments_round_trip(engine):
    state = clusters.State(
        ids=np.array([3, 8]),
        centers=np.eye(2, DIM, dtype=np.float32),
        weights=np.array([1.5, 2.5], np.float32),
        sizes=np.array([1, 0]),
        n_steps=4,
        since_reassign=2,
    )
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/c"))
        img = images.insert_indexed(conn, _row("/c/a.jpg", rid, label=7), "m", _vec(0))
        images.set_clusters(conn, np.array([img]), np.array([3]))
        clusters.save_state(conn, state)
        clusters.set_labels(conn, {3: "cat", 8: None})
        clusters.set_name(conn, 8, "mine")
    with engine.connect() as conn:
        got = clusters.load_state(conn)
        assert got is not None and got.ids.tolist() == [3, 8]
        assert np.array_equal(got.centers, state.centers)
        assert (got.n_steps, got.since_reassign) == (4, 2)
        assert clusters.titles(conn) == {
            3: {"label": "cat", "name": None},
            8: {"label": None, "name": "mine"},
        }
        assert clusters.label_counts(conn) == [(3, 7, 1)]
        assert images.cluster_assignments(conn) == {img: 3}
        assert [r.path for r in clusters.members(conn, 3)] == ["/c/a.jpg"]


def test_every_other_storage_call_runs(engine):
    """The calls not exercised above, once each: no statement is SQLite-only by accident."""
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/e"))
        a = images.insert_indexed(conn, _row("/e/a.jpg", rid, content_hash="h"), "m", _vec(1))
        images.insert_unindexed(conn, _row("/e/p.jpg", rid), "pending", "busy", None)
        images.set_clusters(conn, np.array([a]), np.array([1]))
        assert images.find_indexed_by_hash(conn, "h", "m").id == a
        assert images.rows_under(conn, rid)["/e/a.jpg"][0] == a
        assert [r.path for r in images.not_indexed(conn)] == ["/e/p.jpg"]
        assert [r.id for r in images.indexed_files(conn)] == [a]
        assert [r.path for r in images.clustered_files(conn)] == ["/e/a.jpg"]
        assert [r.id for r in images.fingerprints(conn)] == [a]
        assert images.count_indexed(conn) == 1 and images.indexed_ids(conn).tolist() == [a]
        assert images.sample_vectors(conn, 5, DIM, seed=0).shape == (1, DIM)
        assert [i.tolist() for i, _v, _c in images.iter_vectors(conn, DIM)] == [[a]]
        assert [[r.id for r in rows] for rows in images.iter_stored(conn)] == [[a]]
        assert [r.id for r in images.indexed_by_ids(conn, [a])] == [a]
        pending = images.pending_never_retried(conn)
        images.retry_now(conn, pending, now=5.0)
        assert images.count_pending_due_before(conn, 6.0) == 1
        images.clear_clusters(conn)
        images.forget_all_vectors(conn, "another model")
        assert images.count_by_status(conn) == {"pending": 2}
        queue.schedule(conn, {"/e/q.jpg": 50.0, "/e/r.jpg": 60.0}, now=1.0)
        queue.postpone(conn, ["/e/q.jpg"], 70.0)
        assert [r.path for r in queue.later(conn, now=55.0)] == ["/e/r.jpg", "/e/q.jpg"]
        assert queue.not_yet_due(conn, 65.0) == {"/e/q.jpg"}
        queue.remove(conn, ["/e/q.jpg"])
        assert [r.path for r in queue.entries(conn)] == ["/e/r.jpg"]
        meta.publish_daemon_status(conn, {"pid": 1})
        meta.set_mount_points(conn, ["/e/m"])
        meta.set_next_cluster_id(conn, 9)
        meta.set_consolidated_at(conn, 3)
        assert meta.bump_config_version(conn) == 1
        assert (meta.daemon_status(conn), meta.mount_points(conn)) == ({"pid": 1}, ["/e/m"])
        assert (meta.next_cluster_id(conn), meta.consolidated_at(conn)) == (9, 3)
        clusters.save_state(
            conn, clusters.State(np.array([1]), np.ones((1, DIM), np.float32), np.ones(1), [0])
        )
        assert clusters.count(conn) == 1 and clusters.ids(conn) == [1]
        assert clusters.find(conn, 1).position == 0 and len(clusters.all_clusters(conn)) == 1
        clusters.forget(conn)
        assert clusters.load_state(conn) is None and meta.consolidated_at(conn) == 0


def test_a_server_database_is_created_once_by_concurrent_openers(postgres_server):
    """Only ``create`` puts the schema in an empty server database, which a message names
    without its password; of several processes opening at once, one migrates (advisory lock)."""
    url = postgres_server.create_database()
    eng = make_engine(url)
    try:
        with pytest.raises(LibraryNotFound, match=r"database t\d+ on /"):
            migrate.ensure_schema(eng, url, create=False)
        with ThreadPoolExecutor(3) as pool:
            done = pool.map(lambda _: migrate.ensure_schema(eng, url, create=True), range(3))
            assert list(done) == [None] * 3
        assert migrate.current_revision(eng) == migrate.SCHEMA_HEAD
    finally:
        eng.dispose()
    assert migrate.shown("postgresql://me:secret@db.lan:5433/photos") == "database photos on db.lan"


def test_a_decode_workers_plain_connection_finds_indexed_content(engine):
    with engine.begin() as conn:
        rid = roots.add_root(conn, Path("/w"))
        a = images.insert_indexed(conn, _row("/w/a.jpg", rid, content_hash="h1"), "m", _vec(0))
    worker = worker_connection(_db(engine))
    try:
        assert images.indexed_id_with_hash(worker, "h1", "m") == a
        assert images.indexed_id_with_hash(worker, "h1", "other model") is None
        with engine.begin() as conn:  # a commit after the worker connected: it sees it
            b = images.insert_indexed(conn, _row("/w/b.jpg", rid, content_hash="h2"), "m", _vec(1))
        assert images.indexed_id_with_hash(worker, "h2", "m") == b
    finally:
        worker.close()
