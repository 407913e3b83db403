"""The ``images`` table: one row per file seen, with its state (indexed, failed, pending), its
vector as a float32 BLOB and its cluster. A row's id is never reused (it is the FAISS id).

Each row belongs to a host (revision 0008). What concerns files on disk works on the rows of the
connection's host (``host.host_of``), which are the files this host can see: finding a row by
its path, rows under a folder, moving paths, retries, the cluster view's files; rows are
inserted for it. What concerns the library as a whole (searches, clusters, duplicates, counts,
exports) reads every host's rows, each with its ``host``."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any

import numpy as np
from sqlalchemy import Connection, LargeBinary, bindparam, cast, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from imgindex import names
from imgindex.db.engine import WorkerConnection
from imgindex.db.host import host_of
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, STATUS_PENDING, images

_CHUNK = 900  # SQL parameters per statement, well under SQLite's limit
c = images.c


def _mine(conn: Connection) -> Any:
    """The condition: a row of the connection's host."""
    return c.host == host_of(conn)


# --- vectors as BLOBs -------------------------------------------------------------------------


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def stack_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """Float32 BLOBs as one ``(len, dim)`` matrix."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()


# --- finding rows -----------------------------------------------------------------------------


def find_by_path(conn: Connection, path: str) -> Any:
    """This host's row at ``path`` (every column), or None."""
    return conn.execute(select(images).where(_mine(conn), c.path == path)).first()


def find_by_id(conn: Connection, image_id: int) -> Any:
    return conn.execute(select(images).where(c.id == image_id)).first()


def rows_by_ids(conn: Connection, ids: Sequence[int]) -> list[Any]:
    """Every column of the rows of ``ids`` that exist (any host), by id."""
    out: list[Any] = []
    for i in range(0, len(ids), _CHUNK):
        q = select(images).where(c.id.in_(list(ids[i : i + _CHUNK])))
        out.extend(conn.execute(q).all())
    return sorted(out, key=lambda r: r.id)


def row_as_dict(conn: Connection, image_id: int) -> dict[str, Any] | None:
    """Every column of row ``image_id`` by name, or None."""
    found = conn.execute(select(images).where(c.id == image_id)).mappings().first()
    return None if found is None else dict(found)


def rows_by_hash(conn: Connection, content_hash: str | None) -> list[Any]:
    """``(id, host, path, status)`` of every row with this content (none for None)."""
    if not content_hash:
        return []
    q = select(c.id, c.host, c.path, c.status).where(c.content_hash == content_hash)
    return list(conn.execute(q.order_by(c.id)).all())


def ids_by_paths(conn: Connection, files: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """``{(host, path): id}`` of those of ``files`` that have a row."""
    found: dict[tuple[str, str], int] = {}
    paths = sorted({p for _, p in files})
    wanted = set(files)
    for i in range(0, len(paths), _CHUNK):
        q = select(c.id, c.host, c.path).where(c.path.in_(paths[i : i + _CHUNK]))
        for rid, host, path in conn.execute(q):
            if (host, path) in wanted:
                found[(host, path)] = rid
    return found


def restore_row(conn: Connection, row: dict[str, Any]) -> int:
    """Insert a row as it was saved (every column but its id, which is new); returns its id."""
    values = {k: v for k, v in row.items() if k != "id"}
    key = conn.execute(images.insert().values(**values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def find_indexed_by_hash(conn: Connection, content_hash: str | None, model: str) -> Any:
    """An indexed row of ``model`` with this content (what a copy of it can reuse), or None;
    of any host (its ``host`` says which)."""
    q = select(c.id, c.host, c.path, c.vector, c.width, c.height, c.format, c.label, c.phash)
    q = q.where(c.content_hash == content_hash, c.status == STATUS_INDEXED, c.model == model)
    return conn.execute(q.limit(1)).first()


def indexed_hashes(conn: Connection, model: str) -> frozenset[bytes]:
    """The content hashes (as 20 raw bytes each) of every indexed row of ``model``, of any host:
    what a Ray pass's workers need not decode again."""
    q = select(c.content_hash).where(c.status == STATUS_INDEXED, c.model == model).distinct()
    return frozenset(bytes.fromhex(h) for (h,) in conn.execute(q) if h)


@cache
def _id_by_hash_sql(dialect: str) -> tuple[str, dict[str, Any]]:
    """The statement as the dialect's text (SQLite's, or psycopg's for PostgreSQL), and its
    parameters (``h``, ``m`` to be filled in)."""
    q = select(c.id).where(
        c.content_hash == bindparam("h"), c.status == STATUS_INDEXED, c.model == bindparam("m")
    )
    if dialect == "sqlite":
        compiled = q.limit(1).compile(dialect=sqlite.dialect(paramstyle="named"))
    else:
        compiled = q.limit(1).compile(dialect=postgresql.psycopg.dialect())
    return str(compiled), dict(compiled.params)


def indexed_id_with_hash(worker: WorkerConnection, content_hash: str, model: str) -> int | None:
    """``find_indexed_by_hash``'s id on a decode worker's plain connection (see
    ``engine.worker_connection``): the statement is compiled once, run without SQLAlchemy."""
    sql, params = _id_by_hash_sql("sqlite" if isinstance(worker, sqlite3.Connection) else "pg")
    row = worker.execute(sql, {**params, "h": content_hash, "m": model}).fetchone()
    return None if row is None else row[0]


def rows_under(conn: Connection, root_id: int) -> dict[str, tuple[int, int, int, str, int | None]]:
    """``path -> (id, size, mtime_ns, status, ctime_ns)`` for every row of a root."""
    q = select(c.path, c.id, c.size, c.mtime_ns, c.status, c.ctime_ns)
    return {p: tuple(rest) for p, *rest in conn.execute(q.where(c.root_id == root_id))}


def paths_at_or_under(conn: Connection, path: str, limit: int | None = None) -> list[str]:
    """This host's rows whose path is ``path`` or inside the folder ``path`` (the first
    ``limit``)."""
    prefix = names.to_bytes(path.rstrip(os.sep) + os.sep)  # compared as bytes: see FsPath
    head = func.substr(cast(c.path, LargeBinary), 1, len(prefix))
    q = select(c.path).where(_mine(conn), (c.path == path) | (head == prefix))
    return list(conn.execute(q.limit(limit)).scalars())


def not_indexed(conn: Connection) -> list[Any]:
    """``(host, path, reason, status)`` of every failed or pending row, by host and path."""
    q = select(c.host, c.path, c.reason, c.status).where(c.status != STATUS_INDEXED)
    return list(conn.execute(q.order_by(c.host, c.path)).all())


def all_files(conn: Connection) -> list[Any]:
    """``(id, host, path, status, reason, cluster_id)`` of every row, by host and path."""
    q = select(c.id, c.host, c.path, c.status, c.reason, c.cluster_id)
    return list(conn.execute(q.order_by(c.host, c.path)).all())


def indexed_files(conn: Connection) -> list[Any]:
    """``(id, host, path, cluster_id)`` of every indexed row."""
    q = select(c.id, c.host, c.path, c.cluster_id).where(c.status == STATUS_INDEXED)
    return list(conn.execute(q).all())


def clustered_files(conn: Connection) -> list[Any]:
    """``(path, cluster_id, size, mtime_ns)`` of this host's indexed rows with a cluster (the
    files a cluster view on this host links to), by cluster and path."""
    q = select(c.path, c.cluster_id, c.size, c.mtime_ns)
    q = q.where(_mine(conn), c.status == STATUS_INDEXED, c.cluster_id.is_not(None))
    return list(conn.execute(q.order_by(c.cluster_id, c.path)).all())


def fingerprints(conn: Connection) -> list[Any]:
    """``(id, host, path, content_hash, phash, width, height, size)`` of every indexed row, by
    id."""
    q = select(c.id, c.host, c.path, c.content_hash, c.phash, c.width, c.height, c.size)
    return list(conn.execute(q.where(c.status == STATUS_INDEXED).order_by(c.id)).all())


# --- counts -----------------------------------------------------------------------------------


def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(c.status, func.count()).group_by(c.status)
    return dict(conn.execute(q).all())


def count_indexed(conn: Connection) -> int:
    q = select(func.count()).select_from(images).where(c.status == STATUS_INDEXED)
    return int(conn.execute(q).scalar() or 0)


# --- vectors ----------------------------------------------------------------------------------


def indexed_ids(conn: Connection) -> np.ndarray:
    q = select(c.id).where(c.status == STATUS_INDEXED).order_by(c.id)
    return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def sample_vectors(conn: Connection, size: int, dim: int, seed: int) -> np.ndarray:
    """``size`` indexed vectors drawn at random (all of them when there are fewer)."""
    ids = indexed_ids(conn)
    if len(ids) > size:
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))
    return vectors_for(conn, ids.tolist(), dim)[1]


def vectors_for(conn: Connection, ids: Iterable[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of the given indexed ids, in chunks to keep the SQL parameter count small."""
    ids = list(ids)
    out_ids: list[int] = []
    blobs: list[bytes] = []
    for i in range(0, len(ids), _CHUNK):
        q = select(c.id, c.vector).where(c.id.in_(ids[i : i + _CHUNK]))
        for rid, blob in conn.execute(q.where(c.status == STATUS_INDEXED)):
            out_ids.append(rid)
            blobs.append(blob)
    return np.array(out_ids, dtype=np.int64), stack_blobs(blobs, dim)


def indexed_by_ids(conn: Connection, ids: Sequence[int]) -> list[Any]:
    """``(id, host, path, cluster_id, vector)`` of those of ``ids`` that are indexed."""
    q = select(c.id, c.host, c.path, c.cluster_id, c.vector)
    return list(conn.execute(q.where(c.id.in_(ids), c.status == STATUS_INDEXED)).all())


def iter_vectors(
    conn: Connection, dim: int, chunk: int = 20_000
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every indexed ``(ids, vectors, cluster_ids)`` in id order, ``chunk`` rows at a time;
    a missing cluster id is -1."""
    for rows in _indexed_chunks(conn, [c.id, c.vector, c.cluster_id], chunk):
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        cids = np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int64)
        yield ids, stack_blobs([r[1] for r in rows], dim), cids


def iter_stored(conn: Connection, chunk: int = 20_000) -> Iterator[list[Any]]:
    """Every indexed ``(id, path, model, vector)`` as stored, in id order, ``chunk`` rows at a
    time (a vector may be missing or damaged: this is what ``imgindex check`` reads)."""
    yield from _indexed_chunks(conn, [c.id, c.path, c.model, c.vector], chunk)


def _indexed_chunks(conn: Connection, columns: list[Any], chunk: int) -> Iterator[list[Any]]:
    last = -1
    while True:
        q = select(*columns).where(c.status == STATUS_INDEXED, c.id > last)
        rows = conn.execute(q.order_by(c.id).limit(chunk)).all()
        if not rows:
            return
        last = rows[-1].id
        yield list(rows)


def cluster_assignments(conn: Connection) -> dict[int, int]:
    """``{id: cluster id}`` of every indexed row (-1: none)."""
    q = select(c.id, c.cluster_id).where(c.status == STATUS_INDEXED)
    return {i: (-1 if cid is None else cid) for i, cid in conn.execute(q)}


# --- writing ----------------------------------------------------------------------------------


def insert_indexed(conn: Connection, row: dict[str, Any], model: str, vector: np.ndarray) -> int:
    """Add an indexed row of this host with ``vector`` of ``model``; returns its id."""
    stmt = images.insert().values(
        **row, host=host_of(conn), status=STATUS_INDEXED, model=model, vector=vector_to_blob(vector)
    )
    key = conn.execute(stmt).inserted_primary_key
    assert key is not None
    return int(key[0])


def insert_unindexed(
    conn: Connection,
    row: dict[str, Any],
    status: str,
    reason: str | None,
    retry_after: float | None,
) -> None:
    """Add a failed or pending row of this host (``retry_after``: when a pending one is tried
    again)."""
    stmt = images.insert().values(
        **row, host=host_of(conn), status=status, reason=reason, retry_after=retry_after
    )
    conn.execute(stmt)


def update_file(conn: Connection, image_id: int, values: dict[str, Any]) -> None:
    """Set the file's columns (path, size, times, ...) of a row of this host, which keeps its
    vector (another host's row is left as it is: its file is not on this host's disks)."""
    conn.execute(update(images).where(c.id == image_id, _mine(conn)).values(**values))


def delete_images(conn: Connection, ids: Iterable[int]) -> int:
    ids = list(ids)
    for i in range(0, len(ids), _CHUNK):
        conn.execute(delete(images).where(c.id.in_(ids[i : i + _CHUNK])))
    return len(ids)


def move_paths(conn: Connection, src: str, dest: str, root_id: int) -> tuple[int, list[int]]:
    """Rename this host's row at ``src``, or every one under folder ``src``, to live under
    ``dest`` (root ``root_id``, of this host).

    Ids and vectors do not change. A row already at a destination path is stale (the file there
    now is the one that moved) and is dropped. Returns ``(rows moved, indexed ids dropped)``.
    """
    moved, dropped = 0, []
    for old in paths_at_or_under(conn, src):
        new = dest + old[len(src) :]
        if new == old:
            continue
        clash = find_by_path(conn, new)
        if clash is not None:
            if clash.status == STATUS_INDEXED:
                dropped.append(clash.id)
            delete_images(conn, [clash.id])
        conn.execute(
            update(images)
            .where(_mine(conn), c.path == old)
            .values(path=new, root_id=root_id, updated_at=time.time())
        )
        moved += 1
    return moved, dropped


_FORGET_VECTOR = {"vector": None, "model": None, "cluster_id": None, "content_hash": None}


def forget_all_vectors(conn: Connection, reason: str) -> None:
    """Every row but the failed ones becomes pending without a vector (another model)."""
    conn.execute(
        update(images)
        .where(c.status != STATUS_FAILED)
        .values(status=STATUS_PENDING, reason=reason, **_FORGET_VECTOR)
    )


def forget_vectors(conn: Connection, ids: Sequence[int], reason: str, retry_after: float) -> None:
    """These rows become pending without a vector, retried at ``retry_after``."""
    for i in range(0, len(ids), _CHUNK):
        conn.execute(
            update(images)
            .where(c.id.in_(ids[i : i + _CHUNK]))
            .values(status=STATUS_PENDING, reason=reason, retry_after=retry_after, **_FORGET_VECTOR)
        )


# --- pending rows -----------------------------------------------------------------------------


def due_for_retry(conn: Connection, now: float, limit: int = 1000) -> list[str]:
    """Paths of (the first ``limit``) pending rows of this host whose retry time has come."""
    q = select(c.path).where(_mine(conn), c.status == STATUS_PENDING, c.retry_after <= now)
    return list(conn.execute(q.limit(limit)).scalars())


def retry_now(conn: Connection, ids: Sequence[int], now: float) -> None:
    """Make these pending rows due for a retry at ``now``."""
    for i in range(0, len(ids), _CHUNK):
        conn.execute(
            update(images)
            .where(c.id.in_(ids[i : i + _CHUNK]), c.status == STATUS_PENDING)
            .values(retry_after=now)
        )


def pending_never_retried(conn: Connection) -> list[int]:
    """Ids of pending rows without a retry time."""
    q = select(c.id).where(c.status == STATUS_PENDING, c.retry_after.is_(None))
    return list(conn.execute(q).scalars())


def count_pending_due_before(conn: Connection, when: float) -> int:
    """Pending rows whose retry time is before ``when``."""
    q = select(func.count()).where(c.status == STATUS_PENDING, c.retry_after < when)
    return int(conn.execute(q).scalar() or 0)


# --- clusters ---------------------------------------------------------------------------------


def set_clusters(conn: Connection, ids: np.ndarray, cluster_ids: np.ndarray) -> None:
    """Write cluster assignments; only rows whose cluster changed are touched."""
    if len(ids) == 0:
        return
    pairs = [{"i": int(i), "c": int(cid)} for i, cid in zip(ids, cluster_ids, strict=True)]
    stmt = (
        update(images)
        .where(c.id == bindparam("i"), c.cluster_id.is_distinct_from(bindparam("c")))
        .values(cluster_id=bindparam("c"))
    )
    conn.execute(stmt.execution_options(synchronize_session=False), pairs)


def clear_clusters(conn: Connection) -> None:
    """No row belongs to a cluster any more."""
    conn.execute(update(images).values(cluster_id=None))
