"""Table definitions used by queries. The schema itself is created only by the Alembic
migrations in ``migrations/``; ``tests/test_migrations.py`` checks that both agree."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

from imgindex import names


class FsPath(TypeDecorator[str]):
    """A file name, stored losslessly, read back as the surrogate-escaped ``str`` that
    Python's file functions take (see ``imgindex.names``).

    SQLite: TEXT when it is valid UTF-8 (every library before), else its raw bytes as a BLOB
    (SQLite keeps a BLOB as it is in a TEXT column). PostgreSQL: always the raw bytes, in a
    BYTEA column. A TEXT column there could not hold a name that is not UTF-8 (nor a NUL-free
    escape of one without a second spelling of the same name), and BYTEA compares and sorts
    byte by byte, as SQLite's BINARY collation does, so ``ORDER BY path`` and the prefix test
    of ``images.paths_at_or_under`` agree on both databases."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(LargeBinary())
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if not isinstance(value, str):
            return value
        if dialect.name == "postgresql" or not names.is_utf8(value):
            return names.to_bytes(value)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, memoryview):
            value = value.tobytes()
        return names.from_bytes(value) if isinstance(value, bytes) else value


#: An integer that may pass 2**31 (nanosecond times, file sizes, 64-bit hashes, ids): INTEGER
#: on SQLite (64-bit already; the on-disk schema is unchanged), BIGINT on PostgreSQL.
Int64 = Integer().with_variant(BigInteger(), "postgresql")


metadata = MetaData()

#: Library-wide settings and counters as key/value text (model, dim, k, counters, ...).
meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

#: Folders the library watches and indexes, each on its host (revision 0008): the host whose
#: data directory indexes it; ``""`` for a library that only one machine uses (``imgindex.hosts``).
#: The same path may be a root of two hosts.
roots = Table(
    "roots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host", Text, nullable=False),
    Column("path", FsPath, nullable=False),
    Column("added_at", Float, nullable=False),
    UniqueConstraint("host", "path", name="uq_roots_host_path"),
)

#: One row per file seen. ``id`` is never reused (AUTOINCREMENT): it is the FAISS id, and a file
#: whose content changes gets a new row, so a stale FAISS entry can never alias a new vector.
#: ``host``: its root's host (revision 0008).
images = Table(
    "images",
    metadata,
    Column("id", Int64, primary_key=True, autoincrement=True),
    Column("host", Text, nullable=False),
    Column("path", FsPath, nullable=False),
    Column("root_id", Integer, ForeignKey("roots.id", ondelete="CASCADE"), nullable=False),
    Column("size", Int64, nullable=False),
    Column("mtime_ns", Int64, nullable=False),
    Column("content_hash", Text),
    Column("width", Integer),
    Column("height", Integer),
    Column("format", Text),
    Column("status", Text, nullable=False),  # indexed | failed | pending
    Column("reason", Text),
    Column("model", Text),
    Column("vector", LargeBinary),
    Column("cluster_id", Integer),
    Column("updated_at", Float, nullable=False),
    Column("retry_after", Float),  # revision 0002
    Column("label", Integer),  # ImageNet top-1 class index, when the model has a head (0005)
    Column("phash", Int64),  # 64-bit perceptual (DCT) hash as a signed integer (0005)
    Column("ctime_ns", Int64),  # inode change time: a failed file is retried on a chmod (0006)
    UniqueConstraint("host", "path", name="uq_images_host_path"),
    sqlite_autoincrement=True,
)
Index("ix_images_content_hash", images.c.content_hash)
Index("ix_images_status", images.c.status)
Index("ix_images_cluster_id", images.c.cluster_id)

#: Persistent MiniBatchKMeans state, one row per cluster (revision 0002).
clusters = Table(
    "clusters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # stable, user-visible id
    Column("position", Integer, nullable=False),  # row in the centroid matrix
    Column("centroid", LargeBinary, nullable=False),  # float32
    Column("weight", Float, nullable=False),  # MiniBatchKMeans per-centre counts
    Column("size", Integer, nullable=False),  # members assigned now
)

#: Each cluster's readable label (its members' most frequent ImageNet classes) and the name a
#: user gave it; apart from ``clusters``, which is rewritten at every batch (revision 0005).
cluster_labels = Table(
    "cluster_labels",
    metadata,
    Column("cluster_id", Integer, primary_key=True, autoincrement=False),
    Column("label", Text),
    Column("name", Text),
)

#: Paths the daemon's watcher saw change, processed once ``due_at`` passes (revision 0003);
#: each host's daemon processes its own (revision 0008).
queue = Table(
    "queue",
    metadata,
    Column("host", Text, nullable=False),
    Column("path", FsPath, nullable=False),
    Column("due_at", Float, nullable=False),
    Column("enqueued_at", Float, nullable=False),
    PrimaryKeyConstraint("host", "path", name="queue_pkey"),
)
Index("ix_queue_due_at", queue.c.due_at)

#: Changes to the set of indexed vectors, appended by triggers on ``images`` (revision 0004);
#: a FAISS file reflects the log up to some position and is caught up from the rows after it
#: (``db.changes``). ``xid`` (revision 0007): the writing transaction's id on PostgreSQL
#: (default ``pg_current_xact_id()``), where rows commit out of ``seq`` order; 0 on SQLite.
index_log = Table(
    "index_log",
    metadata,
    Column("seq", Int64, primary_key=True, autoincrement=True),
    Column("image_id", Int64, nullable=False),
    Column("xid", Int64, nullable=False),
    sqlite_autoincrement=True,
)

STATUS_INDEXED = "indexed"
STATUS_FAILED = "failed"
STATUS_PENDING = "pending"
