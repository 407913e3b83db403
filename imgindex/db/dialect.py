"""Statements whose syntax differs between databases, each behind a name that says what it
does: SQLite (the default, embedded) and PostgreSQL (``imgindex[postgres]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, column, func, select, table
from sqlalchemy.dialects import postgresql, sqlite

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


def _columns(key: str | Sequence[str]) -> list[str]:
    return [key] if isinstance(key, str) else list(key)


def last_autoincrement_id(conn: Connection, table_name: str) -> int:
    """The last id an AUTOINCREMENT table handed out (0 when none): ids are never reused, so
    this is a position in the table's history even after rows are deleted.

    PostgreSQL: the last value of the column's sequence. A sequence is not transactional: the
    value may belong to a transaction that has not committed yet (issue 11's "changes log
    under concurrency" is about exactly that; a single writer, as today, is unaffected)."""
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


def integrity_problems(conn: Connection) -> list[str]:
    """What the database's own consistency check finds (``[]``: sound).

    PostgreSQL has no such check without extensions (``amcheck`` needs a superuser to
    install): a server's storage is its administrator's, so there is nothing to report."""
    if conn.dialect.name == "postgresql":
        return []
    rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
    return [] if rows == ["ok"] else rows
