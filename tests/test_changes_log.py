"""The changes log under concurrency (issue 11): several writers commit into one database, each
on its own connection, and FAISS caches that catch up from the log must never miss or double
a change. On PostgreSQL a row's ``seq`` commits out of order across transactions; on SQLite
one writer at a time commits, and the same tests hold.

Real databases (a SQLite file, a PostgreSQL server from ``tests/pg.py``), real threads."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, select, text

from imgindex.cache import VectorCache
from imgindex.db import changes, images, meta, migrate, roots
from imgindex.db.engine import make_engine, snapshot
from imgindex.db.schema import index_log
from imgindex.vindex import index_files

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow

DIM = 8


def _seed(eng: Engine) -> Engine:
    """One root and a library id in a library database at head."""
    with eng.begin() as conn:
        roots.add_root(conn, Path("/p"))
        meta.set_library_id(conn, "lib")
    return eng


@pytest.fixture()
def engine(engine: Engine) -> Engine:
    """conftest's engine (each backend, at head), with one root and a library id."""
    return _seed(engine)


@pytest.fixture()
def pg_engine(postgres_server: object) -> Iterator[Engine]:
    """The PostgreSQL one alone."""
    eng = make_engine(postgres_server.create_database())  # type: ignore[attr-defined]
    migrate.upgrade(eng, None)
    try:
        yield _seed(eng)
    finally:
        eng.dispose()


def _vec(rng: random.Random) -> np.ndarray:
    v = np.array([rng.gauss(0, 1) for _ in range(DIM)], np.float32)
    return v / np.linalg.norm(v)


def insert(conn: Connection, name: str, seed: int = 0) -> int:
    """An indexed image ``/p/<name>.jpg``; its id (the trigger logs it)."""
    row = {"path": f"/p/{name}.jpg", "root_id": 1, "size": 1, "mtime_ns": 1, "updated_at": 0.0}
    return images.insert_indexed(conn, row, "m", _vec(random.Random(seed)))


def insert_0006(conn: Connection, name: str) -> int:
    """``insert`` on a database still at revision 0006 (no host column yet), in plain SQL."""
    on_pg = conn.dialect.name == "postgresql"
    path = f"/p/{name}.jpg"
    row = {"p": path.encode() if on_pg else path, "v": _vec(random.Random(0)).tobytes()}
    q = text(
        "INSERT INTO images (path, root_id, size, mtime_ns, status, model, vector, updated_at) "
        "VALUES (:p, 1, 1, 1, 'indexed', 'm', :v, 0) RETURNING id"
    )
    return int(conn.execute(q, row).scalar_one())


def held(cache: VectorCache) -> list[int]:
    """The ids of the cache's index after catching up, sorted; each must be there once."""
    cache.catch_up()
    ids = cache.index.ids().tolist()
    assert len(ids) == len(set(ids)), "an id is in the index twice"
    return sorted(ids)


def indexed(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(images.indexed_ids(conn).tolist())


def reader(folder: Path, engine: Engine) -> VectorCache:
    """A reader's cache (builds in memory when there is no file; never writes)."""
    folder.mkdir(exist_ok=True)
    return VectorCache(folder, DIM, engine, writes=False)


def writer(folder: Path, engine: Engine) -> VectorCache:
    """A host's writer cache: saves its own FAISS files in ``folder`` (and trims the log)."""
    folder.mkdir(exist_ok=True)
    cache = VectorCache(folder, DIM, engine, writes=True)
    cache.load()
    return cache


def test_a_change_committed_after_a_later_one_reaches_a_catching_up_reader(engine, tmp_path):
    """Connection A inserts and holds its transaction open while B inserts and commits (on
    SQLite B waits its turn: one writer at a time); a reader catching up meanwhile holds B's
    image, and A's once A commits. Then the same with a deletion committed late."""
    concurrent = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        first = insert(conn, "first")
    cache = reader(tmp_path / "reader", engine)
    assert held(cache) == [first]
    with engine.connect() as a, engine.connect() as b:
        with a.begin():
            late = insert(a, "late")  # takes its seq first, commits last
            if concurrent:
                with b.begin():
                    early = insert(b, "early")
            assert held(cache) == sorted([first] + ([early] if concurrent else []))
        if not concurrent:
            with b.begin():
                early = insert(b, "early")
        assert held(cache) == sorted([first, late, early]) == indexed(engine)

        with a.begin():
            images.delete_images(a, [early])  # logged first, committed last
            if concurrent:
                with b.begin():
                    other = insert(b, "other")
            assert held(cache) == sorted([first, late, early] + ([other] if concurrent else []))
        if not concurrent:
            with b.begin():
                other = insert(b, "other")
    assert held(cache) == sorted([first, late, other]) == indexed(engine)


def test_a_writers_cache_and_a_reader_of_its_file_see_late_commits(pg_engine, tmp_path):
    """The host's writer catches up past a transaction that is still open, saves its file,
    and a reader maps that file: once the transaction commits, both catch up to it."""
    with pg_engine.begin() as conn:
        first = insert(conn, "first")
    host = writer(tmp_path / "host", pg_engine)
    with pg_engine.connect() as a, a.begin():
        late = insert(a, "late")
        with pg_engine.begin() as b:
            early = insert(b, "early")
        assert held(host) == sorted([first, early])
        host.save()
        mapped = reader(tmp_path / "host", pg_engine)
        assert held(mapped) == sorted([first, early]) and mapped.index.read_only
    assert held(host) == held(mapped) == sorted([first, early, late]) == indexed(pg_engine)
    host.save()  # the late change moved the position without a new seq: a new file
    ((seq, _),) = index_files(tmp_path / "host")
    assert seq == host.index.seq
    fresh = reader(tmp_path / "host", pg_engine)
    assert held(fresh) == indexed(pg_engine) and fresh.index.read_only


def test_another_hosts_trim_never_hides_a_late_commit(pg_engine, tmp_path, monkeypatch):
    """Host A's index is at a position where a transaction was still open; that transaction
    commits, then host B saves and trims the log at once (no retention): A's next catch-up
    must still hold the late image (it rebuilds: the rows it lacks were trimmed)."""
    monkeypatch.setattr(changes, "LOG_RETENTION_S", 0.0)
    with pg_engine.begin() as conn:
        first = insert(conn, "first")
    host_a = writer(tmp_path / "a", pg_engine)
    with pg_engine.connect() as t, t.begin():
        late = insert(t, "late")
        with pg_engine.begin() as conn:
            early = insert(conn, "early")
        assert held(host_a) == sorted([first, early])
    host_b = writer(tmp_path / "b", pg_engine)  # builds and saves past it: trims its rows
    with pg_engine.connect() as conn:
        assert len(changes.logged_since(conn, host_a.index.position)) == 0
    assert held(host_a) == sorted([first, early, late]) == indexed(pg_engine)
    assert held(host_b) == indexed(pg_engine)


def test_the_log_keeps_rows_for_the_retention_on_postgresql(pg_engine, tmp_path):
    """A save trims nothing a host that caught up within the retention still needs: its
    catch-up replays the log, no rebuild."""
    with pg_engine.begin() as conn:
        insert(conn, "first")
    host_a = writer(tmp_path / "a", pg_engine)
    with pg_engine.begin() as conn:
        second = insert(conn, "second")
    writer(tmp_path / "b", pg_engine)  # saves and would trim `second` without a retention
    with pg_engine.connect() as conn:
        assert changes.logged_since(conn, host_a.index.position).tolist() == [second]
        assert changes.log_position(conn)[1] == (0, 0)
    assert held(host_a) == indexed(pg_engine)


WRITERS = 4
TRANSACTIONS = 25


def _write_at_random(engine: Engine, n: int, failures: list[BaseException]) -> None:
    """One writer on its own connection: transactions that insert, re-vector or delete its
    own images, each holding its changes a random while before it commits."""
    rng = random.Random(n)
    mine: list[int] = []
    try:
        with engine.connect() as conn:
            for t in range(TRANSACTIONS):
                with conn.begin():
                    new = [insert(conn, f"w{n}-{t}-{i}", rng.random()) for i in range(3)]
                    gone = rng.sample(mine, min(len(mine), rng.randint(0, 2)))
                    images.delete_images(conn, gone)
                    if mine and (changed := [i for i in mine if i not in gone][:1]):
                        images.update_file(
                            conn, changed[0], {"vector": images.vector_to_blob(_vec(rng))}
                        )
                    time.sleep(rng.uniform(0, 0.04))
                mine = [i for i in mine if i not in gone] + new
                time.sleep(rng.uniform(0, 0.01))
    except BaseException as exc:
        failures.append(exc)


def test_readers_catching_up_under_concurrent_writers_hold_exactly_the_indexed_ids(
    engine, tmp_path, monkeypatch
):
    """Several writer threads commit interleaved inserts, vector changes and deletions while
    caches catch up over and over: an in-memory reader, two hosts' writer caches that save
    (and trim at once: no retention) and a reader of one host's files. At the end each holds
    exactly the indexed ids, none twice, with their stored vectors."""
    monkeypatch.setattr(changes, "LOG_RETENTION_S", 0.0)
    caches = [reader(tmp_path / "mem", engine), writer(tmp_path / "a", engine)]
    if engine.dialect.name == "postgresql":  # SQLite: one library folder, one writer
        caches.append(writer(tmp_path / "b", engine))
    caches.append(reader(tmp_path / "a", engine))
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_write_at_random, args=(engine, n, failures))
        for n in range(WRITERS)
    ]
    for th in threads:
        th.start()
    rounds = 0
    while any(th.is_alive() for th in threads):
        for cache in caches:
            held(cache)
            if cache.writes and rounds % 3 == 0:
                cache.save()
        rounds += 1
    for th in threads:
        th.join()
    assert failures == []
    want = indexed(engine)
    assert len(want) > WRITERS * TRANSACTIONS
    for cache in caches:
        assert held(cache) == want
    with snapshot(engine) as conn:
        ids, stored = images.vectors_for(conn, want, DIM)
    for cache in caches:  # exact (flat) indexes: the nearest to each stored vector is its own
        _, top = cache.index.search(stored, 1)
        assert top[:, 0].tolist() == ids.tolist()
    assert rounds >= 3  # the caches caught up while the writers wrote


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_to_0007_keeps_the_logged_changes_and_logs_new_ones_with_xids(
    backend, request, tmp_path
):
    """A database at 0006 holding logged changes: after 0007 they are still replayed from an
    older position, a cache catches up, and new changes carry the writing
    transaction's id (PostgreSQL; 0 on SQLite)."""
    if backend == "sqlite":
        db: Path | str = tmp_path / "imgindex.db"
        path: Path | None = tmp_path / "imgindex.db"
    else:
        db, path = request.getfixturevalue("postgres_server").create_database(), None
    eng = make_engine(db)
    try:
        migrate.upgrade(eng, path, target="0006")
        with eng.begin() as conn:
            root = b"/p" if backend == "postgresql" else "/p"
            conn.execute(
                text("INSERT INTO roots (id, path, added_at) VALUES (1, :p, 0)"), {"p": root}
            )
            a = insert_0006(conn, "a")
        with eng.connect() as conn:
            before = changes.log_head(conn)  # a cache's position, saved before the upgrade
        with eng.begin() as conn:
            b = insert_0006(conn, "b")
        migrate.upgrade(eng, path)
        with eng.begin() as conn:
            c = insert(conn, "c")
        with eng.connect() as conn:
            since = sorted(changes.logged_since(conn, before))
            xids = dict(conn.execute(select(index_log.c.seq, index_log.c.xid)).all())
        if backend == "sqlite":
            assert since == [b, c] and set(xids.values()) == {0}
        else:  # rows logged before carry the migration's id: re-read once, never missed
            assert since == [a, b, c] and xids[1] == xids[2] < xids[3]
        cache = reader(tmp_path / "r", eng)
        assert held(cache) == [a, b, c]
        with eng.begin() as conn:
            images.delete_images(conn, [a])
        assert held(cache) == [b, c] == indexed(eng)
    finally:
        eng.dispose()
