"""SQLite, the table of record: engine setup, the write lock, settings and image rows.

Every function takes an open SQLAlchemy ``Connection``; callers own the transaction, so one
batch of images, its vectors and its cluster update commit together or not at all.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from imgindex import fsafe, names
from imgindex.errors import ImgIndexError, LibraryLocked
from imgindex.schema import STATUS_INDEXED, images, index_log, meta, roots

BUSY_TIMEOUT_MS = 30_000


def make_engine(db_path: Path, *, read_only: bool = False) -> Engine:
    """Engine for one SQLite file: WAL, busy timeout, foreign keys, NORMAL sync under WAL.

    ``read_only``: for a reader that cannot write the data directory (a read-only mount,
    another user's library); its connections never write (see ``connect_read_only``).
    """
    if read_only:
        engine = create_engine(f"sqlite:///{db_path}", creator=lambda: connect_read_only(db_path))
    else:
        engine = create_engine(f"sqlite:///{db_path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if read_only:  # the database is in WAL mode already (it is persistent)
            cur.execute("PRAGMA query_only=ON")
        else:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """A connection that never writes: ``mode=ro``, which reads a WAL database when its
    ``-shm`` file exists (a writer has it open) or can be created. When neither holds (a
    read-only folder that no writer has open), ``immutable=1``, as SQLite documents for
    that case: safe only when no write is pending, so a non-empty ``-wal`` is refused."""
    uri = db_path.absolute().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorname", "") not in _NO_SHM:
            raise
    wal = db_path.with_name(f"{db_path.name}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise ImgIndexError(
            f"{wal} holds changes not yet written to the database, and {db_path.parent} is "
            "read-only here; run `imgindex status` once as a user who can write it"
        )
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)


_NO_SHM = ("SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN")  # the -shm file cannot be created


class WriteLock(fsafe.Flock):
    """An exclusive ``flock`` on the library's lock file: one writer per library."""

    def __init__(self, path: Path, purpose: str) -> None:
        super().__init__(path)
        self.purpose = purpose

    def acquire(self) -> None:
        holder = self.try_exclusive(f"pid {os.getpid()} ({self.purpose})")
        if holder is not None:
            raise LibraryLocked(
                f"library {self.path.parent} is being written by {holder}; wait for it to "
                "finish or stop it (or use --data-dir for another library)"
            )


#: Who holds the write lock (``"pid N (purpose)"``), or None when nobody does.
lock_holder = fsafe.holder


# --- settings ---------------------------------------------------------------------------------


def get_meta(conn: Connection, key: str, default: str | None = None) -> str | None:
    value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
    return default if value is None else value


def all_meta(conn: Connection) -> dict[str, str]:
    return dict(conn.execute(select(meta.c.key, meta.c.value)).all())


def set_meta(conn: Connection, key: str, value: object) -> None:
    stmt = sqlite_insert(meta).values(key=key, value=str(value))
    conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": str(value)}))


def add_to_counter(conn: Connection, key: str, amount: int) -> int:
    value = int(get_meta(conn, key, "0") or 0) + amount
    set_meta(conn, key, value)
    return value


# --- the FAISS cache's changes log (rows written by triggers, see revision 0004) -------------


def log_position(conn: Connection) -> tuple[int, int]:
    """``(head, trimmed)``: the last ``index_log`` seq written, and the seq up to which rows
    were deleted (a FAISS file older than that cannot be caught up from the log)."""
    head = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'index_log'")).scalar()
    return int(head or 0), int(get_meta(conn, "index_log_trimmed", "0") or 0)


def logged_since(conn: Connection, seq: int) -> np.ndarray:
    """Ids of images whose indexed vector appeared, changed or went after ``seq``."""
    q = select(index_log.c.image_id).where(index_log.c.seq > seq).distinct()
    return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def trim_log(conn: Connection, seq: int) -> None:
    """Forget log rows up to ``seq`` (a FAISS file reflecting ``seq`` was saved)."""
    conn.execute(delete(index_log).where(index_log.c.seq <= seq))
    set_meta(conn, "index_log_trimmed", max(seq, log_position(conn)[1]))


# --- roots ------------------------------------------------------------------------------------


def add_root(conn: Connection, path: Path) -> int:
    existing = conn.execute(select(roots.c.id).where(roots.c.path == str(path))).scalar()
    if existing is not None:
        return existing
    return conn.execute(roots.insert().values(path=str(path), added_at=time.time())).lastrowid


def list_roots(conn: Connection) -> list[tuple[int, Path]]:
    rows = conn.execute(select(roots.c.id, roots.c.path).order_by(roots.c.id)).all()
    return [(rid, Path(p)) for rid, p in rows]


# --- images -----------------------------------------------------------------------------------


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def rows_under(conn: Connection, root_id: int) -> dict[str, tuple[int, int, int, str, int | None]]:
    """``path -> (id, size, mtime_ns, status, ctime_ns)`` for every row of a root."""
    c = images.c
    q = select(c.path, c.id, c.size, c.mtime_ns, c.status, c.ctime_ns)
    return {p: tuple(rest) for p, *rest in conn.execute(q.where(c.root_id == root_id))}


def find_by_path(conn: Connection, path: str) -> Any:
    return conn.execute(select(images).where(images.c.path == path)).first()


def find_indexed_by_hash(conn: Connection, content_hash: str, model: str) -> Any:
    q = select(
        images.c.id,
        images.c.path,
        images.c.vector,
        images.c.width,
        images.c.height,
        images.c.format,
        images.c.label,
        images.c.phash,
    )
    q = q.where(
        images.c.content_hash == content_hash,
        images.c.status == STATUS_INDEXED,
        images.c.model == model,
    )
    return conn.execute(q.limit(1)).first()


def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(images.c.status, func.count()).group_by(images.c.status)
    return dict(conn.execute(q).all())


def indexed_ids(conn: Connection) -> np.ndarray:
    q = select(images.c.id).where(images.c.status == STATUS_INDEXED).order_by(images.c.id)
    return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def count_indexed(conn: Connection) -> int:
    q = select(func.count()).select_from(images).where(images.c.status == STATUS_INDEXED)
    return int(conn.execute(q).scalar() or 0)


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
    for i in range(0, len(ids), 900):
        q = select(images.c.id, images.c.vector).where(images.c.id.in_(ids[i : i + 900]))
        for rid, blob in conn.execute(q.where(images.c.status == STATUS_INDEXED)):
            out_ids.append(rid)
            blobs.append(blob)
    return np.array(out_ids, dtype=np.int64), stack_blobs(blobs, dim)


def iter_vectors(
    conn: Connection, dim: int, chunk: int = 20_000
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every indexed ``(ids, vectors, cluster_ids)`` in id order, ``chunk`` rows at a time;
    a missing cluster id is -1."""
    last = -1
    while True:
        q = (
            select(images.c.id, images.c.vector, images.c.cluster_id)
            .where(images.c.status == STATUS_INDEXED, images.c.id > last)
            .order_by(images.c.id)
            .limit(chunk)
        )
        rows = conn.execute(q).all()
        if not rows:
            return
        last = rows[-1][0]
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        cids = np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int64)
        yield ids, stack_blobs([r[1] for r in rows], dim), cids


def stack_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """Float32 BLOBs as one ``(len, dim)`` matrix."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim).copy()


def paths_at_or_under(conn: Connection, path: str, limit: int | None = None) -> list[str]:
    """Rows whose path is ``path`` or inside the folder ``path`` (the first ``limit``)."""
    prefix = names.to_bytes(path.rstrip(os.sep) + os.sep)  # compared as bytes: see FsPath
    head = func.substr(cast(images.c.path, LargeBinary), 1, len(prefix))
    q = select(images.c.path).where((images.c.path == path) | (head == prefix))
    return list(conn.execute(q.limit(limit)).scalars())


def move_paths(conn: Connection, src: str, dest: str, root_id: int) -> tuple[int, list[int]]:
    """Rename the row at ``src``, or every row under folder ``src``, to live under ``dest``.

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
            .where(images.c.path == old)
            .values(path=new, root_id=root_id, updated_at=time.time())
        )
        moved += 1
    return moved, dropped


def delete_images(conn: Connection, ids: Iterable[int]) -> int:
    ids = list(ids)
    for i in range(0, len(ids), 900):
        conn.execute(delete(images).where(images.c.id.in_(ids[i : i + 900])))
    return len(ids)


def set_clusters(conn: Connection, ids: np.ndarray, cluster_ids: np.ndarray) -> None:
    """Write cluster assignments; only rows whose cluster changed are touched."""
    if len(ids) == 0:
        return
    pairs = [{"i": int(i), "c": int(c)} for i, c in zip(ids, cluster_ids, strict=True)]
    stmt = (
        update(images)
        .where(images.c.id == bindparam("i"), images.c.cluster_id.is_distinct_from(bindparam("c")))
        .values(cluster_id=bindparam("c"))
    )
    conn.execute(stmt.execution_options(synchronize_session=False), pairs)
