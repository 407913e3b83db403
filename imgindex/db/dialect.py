"""Statements whose syntax differs between databases, each behind a name that says what it
does: SQLite (the default, embedded) and PostgreSQL (``imgindex[postgres]``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Table,
    Text,
    cast,
    column,
    delete,
    extract,
    func,
    insert,
    select,
    table,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from imgindex.db.schema import metadata

#: SQLite's record of each AUTOINCREMENT table's last id.
_sqlite_sequence = table("sqlite_sequence", column("name"), column("seq"))


def _insert(conn: Connection, target: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if conn.dialect.name == "sqlite":
        return sqlite.insert(target)
    if conn.dialect.name == "postgresql":
        return postgresql.insert(target)
    raise NotImplementedError(
        f"imgindex stores its library in SQLite or PostgreSQL, not {conn.dialect.name}"
    )


def upsert(
    conn: Connection,
    target: Table,
    rows: Sequence[dict[str, Any]],
    key: str | Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert ``rows``; a row whose ``key`` (a unique column, or columns) exists already gets
    the ``update`` columns of the new row instead (``INSERT ... ON CONFLICT DO UPDATE``)."""
    if not rows:
        return
    stmt = _insert(conn, target)
    stmt = stmt.on_conflict_do_update(
        index_elements=_columns(key), set_={c: stmt.excluded[c] for c in update}
    )
    conn.execute(stmt, list(rows))


def insert_missing(
    conn: Connection, target: Table, rows: Sequence[dict[str, Any]], key: str | Sequence[str]
) -> None:
    """Insert those of ``rows`` whose ``key`` (a unique column, or columns) is not there yet
    (``INSERT OR IGNORE``)."""
    if not rows:
        return
    stmt = _insert(conn, target).on_conflict_do_nothing(index_elements=_columns(key))
    conn.execute(stmt, list(rows))


def increment(conn: Connection, target: Table, key: str, amount: int) -> int:
    """Add ``amount`` to the integer kept as text in the ``value`` column of row ``key`` of a
    key/value table (created at ``amount``); the new value. One statement, so concurrent
    writers serialise on the row instead of overwriting each other's sums."""
    value = target.c.value
    stmt = _insert(conn, target).values(key=key, value=str(amount))
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"], set_={"value": cast(cast(value, BigInteger) + amount, Text)}
    )
    return int(conn.execute(stmt.returning(value)).scalar_one())


def _columns(key: str | Sequence[str]) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def last_autoincrement_id(conn: Connection, table_name: str) -> int:
    """The last id an AUTOINCREMENT table handed out (0 when none): ids are never reused, so
    this is a position in the table's history even after rows are deleted.

    PostgreSQL: the last value of the column's sequence. A sequence is not transactional: the
    value may belong to a transaction that has not committed yet, and ids commit out of
    order: the changes log reads its head otherwise there (``changes.log_position``)."""
    if conn.dialect.name == "postgresql":
        return _pg_sequence_value(conn, table_name)
    q = select(_sqlite_sequence.c.seq).where(_sqlite_sequence.c.name == table_name)
    return int(conn.execute(q).scalar() or 0)


def _pg_sequence_value(conn: Connection, table_name: str) -> int:
    (key,) = metadata.tables[table_name].primary_key.columns
    seq = conn.execute(select(func.pg_get_serial_sequence(table_name, key.name))).scalar()
    # a sequence is a one-row relation; its name comes from the catalogue, quoted there
    row = conn.exec_driver_sql(f"SELECT last_value, is_called FROM {seq}").one()
    return int(row.last_value) if row.is_called else 0


def set_autoincrement(conn: Connection, table_name: str, last: int) -> None:
    """Make ``last`` the last id the table handed out, so the next one is past it (a copied
    library hands out no id its source already did). PostgreSQL: the column's sequence;
    SQLite: ``sqlite_sequence`` of an AUTOINCREMENT table (another reuses ``max(id) + 1``)."""
    if conn.dialect.name == "postgresql":
        (key,) = metadata.tables[table_name].primary_key.columns
        seq = func.pg_get_serial_sequence(table_name, key.name)
        conn.execute(select(func.setval(seq, max(last, 1), last > 0)))
        return
    if not metadata.tables[table_name].dialect_options["sqlite"]["autoincrement"]:
        return
    conn.execute(delete(_sqlite_sequence).where(_sqlite_sequence.c.name == table_name))
    conn.execute(insert(_sqlite_sequence).values(name=table_name, seq=last))


def commits_in_id_order(conn: Connection) -> bool:
    """Whether transactions commit in the order of the ids they took: SQLite has one writer at
    a time; on PostgreSQL several sessions write at once, so a smaller id may commit later."""
    return conn.dialect.name != "postgresql"


def snapshot_xmin() -> ColumnElement[int]:
    """PostgreSQL: the ``xmin`` of the statement's snapshot (as BIGINT): every transaction with
    a smaller id had finished when it was taken, so any row it does not see belongs to a
    transaction whose id is at least this (``pg_current_xact_id()`` of the writer)."""
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    return cast(cast(xmin, Text), BigInteger)


def lock_until_commit(conn: Connection, name: str) -> None:
    """Serialise the transactions that take this lock (by ``name``) until they end: a
    PostgreSQL advisory transaction lock; SQLite has one writer at a time already."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


def server_time(conn: Connection) -> float:
    """Seconds since the epoch on the database server's clock (the transaction's start on
    PostgreSQL; several hosts share that clock), or this host's for SQLite."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(select(extract("epoch", func.now()))).scalar_one())
    return time.time()


def integrity_problems(conn: Connection) -> list[str]:
    """What the database's own consistency check finds (``[]``: sound).

    PostgreSQL has no such check without extensions (``amcheck`` needs a superuser to
    install): a server's storage is its administrator's, so there is nothing to report."""
    if conn.dialect.name == "postgresql":
        return []
    rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
    return [] if rows == ["ok"] else rows
