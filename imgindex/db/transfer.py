"""Copying a library from one database into another, empty one (``imgindex migrate --to
postgresql://...``), and checking that the copy holds exactly what the source does.

The copy is the whole library, row for row: settings, counters and clustering state (``meta``),
roots, every image with its vector, clusters and their labels and names, the watcher's queue,
and the FAISS cache's changes log (``index_log``) with its position. Ids are kept and each
table's sequence is set to the last id its source handed out, so no id is ever handed out
twice (an image's id is its FAISS id).

The FAISS files stay in the data directory. The copy keeps the library's id, its files' records
(``cache.*`` in ``meta``) and the log position they were saved at, so the target sees the
data directory's newest file as exactly what it is: a file of this library at log position
``seq``, caught up from the copied log rows after ``seq`` as on the source. The records are not
trusted blindly: a file is used only when its checksum matches its record and its ``seq`` lies
within the target's log (``VectorCache._usable``, ``_open``); any other file is rebuilt from
the target's rows.

The source is read in one snapshot (the caller holds the library's write lock, so nothing
changes it meanwhile); the target is written in one transaction (PostgreSQL's DDL is
transactional, so the schema too) that commits only once ``verify``'s figures agree, so an
interrupted or wrong copy leaves the target as empty as it was.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    LargeBinary,
    Row,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
)

from imgindex import hosts, names
from imgindex.db import meta, migrate
from imgindex.db.dialect import last_autoincrement_id, set_autoincrement
from imgindex.db.engine import snapshot
from imgindex.db.host import host_of
from imgindex.db.schema import FsPath, images, index_log, metadata, queue, roots
from imgindex.db.schema import meta as meta_table
from imgindex.errors import CopyMismatch, DatabaseNotEmpty, ImgIndexError

#: Rows read and written at a time: memory stays bounded by this many rows (vectors included).
CHUNK = 2_000

#: Every table, parents before children; the log last, after the triggers on ``images`` wrote
#: their own rows (which it replaces).
TABLES: tuple[Table, ...] = (
    *(t for t in metadata.sorted_tables if t is not index_log),
    index_log,
)

#: The tables whose ids come from a sequence.
SEQUENCED: tuple[Table, ...] = tuple(t for t in TABLES if t.autoincrement_column is not None)

#: Told ``(table name, rows copied of it so far)`` after each chunk and once at each table's
#: start (0); then ``("verifying", 0)`` before the figures are compared.
Progress = Callable[[str, int], None]

_MOD = 2**256


@dataclass(frozen=True)
class Figures:
    """What one database holds, as ``verify`` compares it.

    ``rows``: rows per table. ``digests``: per table, a checksum of every column of every row
    (the sum of the rows' BLAKE2b-256 digests, so independent of row order). ``vectors``:
    images with a vector; ``vector_checksum``: BLAKE2b-256 over (id, model, vector bytes) of
    those, in id order. ``last_ids``: per sequenced table, the last id handed out (past ids
    of deleted rows too)."""

    rows: dict[str, int]
    digests: dict[str, str]
    vectors: int
    vector_checksum: str
    last_ids: dict[str, int]


@dataclass(frozen=True)
class Verification:
    """The figures of a source and of its copy; ``ok`` when the copy holds exactly the
    source's rows and will hand out no id the source did."""

    source: Figures
    target: Figures

    @property
    def differences(self) -> list[str]:
        """What differs, one phrase each (``[]``: nothing)."""
        s, t = self.source, self.target
        found = []
        for name, n in s.rows.items():
            if t.rows.get(name) != n:
                found.append(f"{name}: {n} rows in the library, {t.rows.get(name)} in the copy")
            elif t.digests.get(name) != s.digests[name]:
                found.append(f"{name}: the rows' contents differ")
        if t.vectors != s.vectors:
            found.append(f"vectors: {s.vectors} in the library, {t.vectors} in the copy")
        elif t.vector_checksum != s.vector_checksum:
            found.append("vectors: the checksums differ")
        for name, last in s.last_ids.items():
            if t.last_ids.get(name, 0) < last:
                found.append(f"{name}: the copy would hand out ids the library did ({last})")
        return found

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        """One line for a user: rows, vectors, the vector checksum."""
        s = self.source
        return (
            f"{sum(s.rows.values())} rows in {len(s.rows)} tables, {s.vectors} vectors "
            f"(checksum blake2b:{s.vector_checksum[:16]}), "
            + ("identical in the copy" if self.ok else "; ".join(self.differences))
        )


def copy_library(
    source: Engine, target: Engine, progress: Progress | None = None, *, chunk: int = CHUNK
) -> Verification:
    """Copy the library in ``source`` into ``target``, which must hold none, creating the
    schema there by the migrations; commit only once ``verify``'s figures of both agree. The
    rows of a SQLite library's only host then become the copying host's (``host_of`` the
    target: on a shared database rows are named by host), in the same transaction.
    Raises DatabaseNotEmpty (target refused, untouched), CopyMismatch (nothing committed)."""
    report = progress or (lambda _name, _n: None)
    where = described(target)
    with snapshot(source) as src, target.begin() as dst:
        _check_source(src)
        _prepare_target(dst, where)
        for table in TABLES:
            _copy_table(src, dst, table, chunk, report)
        for table in SEQUENCED:
            set_autoincrement(dst, table.name, last_id(src, table))
        owner = _owner(dst)
        if owner is not None:
            adopt_rows(dst, owner)
        report("verifying", 0)
        result = Verification(figures(src, chunk, owner), figures(dst, chunk))
        _raise_unless_ok(result, where)
    return result


def verify(source: Engine, target: Engine, *, chunk: int = CHUNK) -> Verification:
    """Compare the library in ``source`` with its copy in ``target``, each read in one
    snapshot; raises CopyMismatch naming what differs."""
    with snapshot(target) as dst:
        theirs = figures(dst, chunk)
        owner = _owner(dst)
    with snapshot(source) as src:
        mine = figures(src, chunk, owner)
    result = Verification(mine, theirs)
    _raise_unless_ok(result, described(target))
    return result


def figures(conn: Connection, chunk: int = CHUNK, owner: str | None = None) -> Figures:
    """The figures of the library ``conn`` sees, read ``chunk`` rows at a time; ``owner``:
    as they are once the rows of its only host are that host's (``adopt_rows``)."""
    rows, digests = {}, {}
    vectors, checksum = 0, hashlib.blake2b(digest_size=32)
    for table in TABLES:
        encode = _encoder(table, owner)
        count, total = 0, 0
        for part in _stream(conn, table, chunk):
            for row in part:
                digest = hashlib.blake2b(encode(row), digest_size=32).digest()
                total = (total + int.from_bytes(digest, "big")) % _MOD
            count += len(part)
            if table is images:
                vectors += _feed_vectors(checksum, part)
        rows[table.name], digests[table.name] = count, f"{total:064x}"
    last_ids = {t.name: last_id(conn, t) for t in SEQUENCED}
    return Figures(rows, digests, vectors, checksum.hexdigest(), last_ids)


def last_id(conn: Connection, table: Table) -> int:
    """The last id ``table`` handed out: its sequence's, or its largest id when that is
    larger (SQLite keeps no sequence for a table without AUTOINCREMENT)."""
    key = table.autoincrement_column
    assert key is not None
    largest = conn.execute(select(func.max(key))).scalar() or 0
    return max(int(largest), last_autoincrement_id(conn, table.name))


def described(engine: Engine) -> str:
    """The database as a message names it (no password)."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return migrate.shown(url.render_as_string(hide_password=True))
    return f"database {url.database}"


# --- copying ----------------------------------------------------------------------------------


def adopt_rows(conn: Connection, host: str) -> None:
    """Make the rows of the library's only host (``hosts.LOCAL``) ``host``'s: roots, images,
    the queue and the per-host settings (a SQLite library copied into a shared database)."""
    for table in (roots, images, queue):
        conn.execute(table.update().where(table.c.host == hosts.LOCAL).values(host=host))
    meta.adopt_host_keys(conn, host)


def _check_source(src: Connection) -> None:
    """Refuse a source whose schema is not this imgindex's (opening it upgrades it)."""
    rev = migrate.revision_of(src)
    if rev != migrate.SCHEMA_HEAD:
        raise ImgIndexError(
            f"the library's database is at schema revision {rev}, not {migrate.SCHEMA_HEAD}; "
            "run `imgindex migrate` on it first"
        )


def _prepare_target(dst: Connection, where: str) -> None:
    """Refuse a target that holds a library (or tables named as imgindex's); create the
    schema (or bring an empty one to head) inside ``dst``'s transaction."""
    rev = migrate.revision_of(dst)
    if rev is None:
        clash = sorted(set(inspect(dst).get_table_names()) & set(metadata.tables))
        if clash:
            raise DatabaseNotEmpty(
                f"{where} holds tables named as imgindex's ({', '.join(clash)}) but no imgindex "
                "library; copy the library into an empty database"
            )
    else:
        present = set(inspect(dst).get_table_names())
        held = {t.name: _count(dst, t) for t in TABLES if t.name in present}
        if any(held.values()):
            raise DatabaseNotEmpty(
                f"{where} already holds an imgindex library ({held.get(images.name, 0)} images); "
                "a library is copied only into an empty database: name another, or empty that one"
            )
        if rev not in migrate.known_revisions():
            raise DatabaseNotEmpty(
                f"{where} holds the schema of a newer imgindex (revision {rev}); "
                "copy the library into an empty database"
            )
    migrate.upgrade_on(dst)


def _copy_table(
    src: Connection, dst: Connection, table: Table, chunk: int, report: Progress
) -> None:
    """Every row of ``table``, ``chunk`` at a time, with its ids as they are."""
    if table is index_log:
        dst.execute(delete(index_log))  # the triggers' rows for the images just inserted
    report(table.name, 0)
    copied, keys = 0, table.columns.keys()
    for part in _stream(src, table, chunk):
        dst.execute(insert(table), [dict(zip(keys, row, strict=True)) for row in part])
        copied += len(part)
        report(table.name, copied)


def _stream(conn: Connection, table: Table, chunk: int) -> Iterator[Sequence[Row[Any]]]:
    """The rows of ``table`` in key order, ``chunk`` at a time (a server-side cursor on
    PostgreSQL)."""
    q = select(table).order_by(*table.primary_key.columns)
    yield from conn.execute(q.execution_options(yield_per=chunk)).partitions()


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _raise_unless_ok(result: Verification, where: str) -> None:
    if not result.ok:
        raise CopyMismatch(
            f"the copy in {where} differs from the library: {'; '.join(result.differences)}"
        )


# --- checksums ----------------------------------------------------------------------------------


def _encoder(table: Table, owner: str | None = None) -> Callable[[Row[Any]], bytes]:
    """A row of ``table`` as bytes, the same whichever database it was read from: each value
    tagged with its kind and length (a path as its raw bytes, a float exactly). ``owner``:
    the row as ``adopt_rows`` makes it for that host."""
    kinds = [_kind(col) for col in table.columns]
    adopt = _adopted(table, owner)

    def encode(row: Row[Any]) -> bytes:
        values = adopt(row)
        return b"".join(_field(kind, value) for kind, value in zip(kinds, values, strict=True))

    return encode


def _adopted(table: Table, owner: str | None) -> Callable[[Row[Any]], Sequence[Any]]:
    """How ``adopt_rows`` changes a row of ``table`` for ``owner`` (None: not at all)."""
    if owner is None:
        return lambda row: row
    if table is meta_table:
        return lambda row: (meta.adopted_key(row[0], owner), *row[1:])
    if "host" in table.columns:
        at = list(table.columns.keys()).index("host")
        return lambda row: tuple(
            owner if i == at and v == hosts.LOCAL else v for i, v in enumerate(row)
        )
    return lambda row: row


def _owner(conn: Connection) -> str | None:
    """The host a copy's rows of the library's only host become (None: they stay so, as on a
    SQLite target)."""
    owner = host_of(conn)
    return None if owner == hosts.LOCAL else owner


def _kind(col: Column[Any]) -> str:
    if isinstance(col.type, FsPath):
        return "p"
    if isinstance(col.type, Float):
        return "f"
    if isinstance(col.type, LargeBinary):
        return "b"
    return "v"


def _field(kind: str, value: Any) -> bytes:
    if value is None:
        return b"N"
    if kind == "p" or (kind == "v" and isinstance(value, str)):
        data = names.to_bytes(value)
    elif kind == "f":
        data = float(value).hex().encode()
    elif kind == "b":
        data = bytes(value)
    else:
        data = repr(value).encode()
    return kind.encode() + struct.pack(">Q", len(data)) + data


def _feed_vectors(checksum: hashlib.blake2b, part: Sequence[Row[Any]]) -> int:
    """Add the (id, model, vector) of each row with a vector to ``checksum``; how many."""
    n = 0
    for row in part:
        if row.vector is None:
            continue
        model = (row.model or "").encode()
        vector = bytes(row.vector)
        checksum.update(struct.pack(">qQ", row.id, len(model)) + model)
        checksum.update(struct.pack(">Q", len(vector)) + vector)
        n += 1
    return n
