"""Hosts: several hosts may share one database, and the same path may exist on two of them (two
NAS units with ``/srv/photos`` each). ``roots``, ``images`` and ``queue`` get a ``host`` column
(``imgindex.hosts``); paths are unique per host: ``(host, path)`` is unique in ``roots`` and
``images`` and the primary key of ``queue``.

Existing rows get ``''`` (``hosts.LOCAL``), "the library's only host, whichever machine opens
it": a migration does not depend on the machine running it, and a SQLite library moved to
another machine, or opened in a container whose hostname changes, still owns its files.

PostgreSQL: plain ALTERs (the ``index_log`` triggers of revision 0004 stay). SQLite cannot
change a table's keys in place: each table is rebuilt from what is there (reflected, so columns
and indexes that another revision added come along), its triggers recreated, ``images``' last
AUTOINCREMENT id kept (ids are never reused). The rebuild works with foreign keys enforced:
the old ``roots`` is renamed away and dropped only once the rebuilt ``images`` refers to the
new one, so no ``ON DELETE CASCADE`` fires. A downgrade fails when two hosts share a path.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("roots", "images", "queue")
LOCAL = ""  # imgindex.hosts.LOCAL (a migration never imports the code it migrates)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _sqlite():
        _sqlite_rebuild_all(with_host=True)
        return
    for name in TABLES:
        op.add_column(name, sa.Column("host", sa.Text, nullable=False, server_default=LOCAL))
        op.alter_column(name, "host", server_default=None)  # every insert names its host
    for name in ("roots", "images"):
        op.drop_constraint(_unique_on(name, ["path"]), name, type_="unique")
        op.create_unique_constraint(f"uq_{name}_host_path", name, ["host", "path"])
    _pg_primary_key("queue", ["host", "path"])


def downgrade() -> None:
    if _sqlite():
        _sqlite_rebuild_all(with_host=False)
        return
    _pg_primary_key("queue", ["path"])
    for name in ("roots", "images"):
        op.drop_constraint(f"uq_{name}_host_path", name, type_="unique")
        op.create_unique_constraint(f"{name}_path_key", name, ["path"])
    for name in TABLES:
        op.drop_column(name, "host")


# --- PostgreSQL -------------------------------------------------------------------------------


def _unique_on(table: str, columns: list[str]) -> str:
    """The name of ``table``'s unique constraint on exactly ``columns``."""
    for uc in sa.inspect(op.get_bind()).get_unique_constraints(table):
        if uc["column_names"] == columns and uc["name"]:
            return str(uc["name"])
    raise RuntimeError(f"revision 0008: {table} has no unique constraint on {columns}")


def _pg_primary_key(table: str, columns: list[str]) -> None:
    name = sa.inspect(op.get_bind()).get_pk_constraint(table)["name"] or f"{table}_pkey"
    op.drop_constraint(name, table, type_="primary")
    op.create_primary_key(name, table, columns)


# --- SQLite -----------------------------------------------------------------------------------


def _sqlite_rebuild_all(*, with_host: bool) -> None:
    """Rebuild the three tables; the old ones are dropped last, children before parents."""
    bind = op.get_bind()
    seq = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'images'").scalar()
    old = [_sqlite_rebuild(bind, name, with_host=with_host) for name in TABLES]
    # renaming roots away made every table that refers to it refer to the old copy: only the
    # old images may (a table another revision adds must be rebuilt here too, or lose its rows)
    others = bind.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN (?, ?, ?)"
        " AND sql LIKE '%roots_0008_old%'",
        tuple(old),
    ).scalars()
    if stranded := list(others):
        raise RuntimeError(f"revision 0008: {stranded} refer to roots; rebuild them too")
    for name in reversed(old):  # images' old copy refers to roots' old copy: it goes first
        op.execute(f'DROP TABLE "{name}"')
    if seq is not None:  # ids are never reused: the new table goes on from the old one's last id
        op.execute(f"UPDATE sqlite_sequence SET seq = max(seq, {int(seq)}) WHERE name = 'images'")


def _sqlite_rebuild(bind: Any, name: str, *, with_host: bool) -> str:
    """Rebuild ``name`` with (or without) ``host`` and its keys; returns the name of the old
    table, renamed away (still to be dropped)."""
    table = sa.Table(name, sa.MetaData(), autoload_with=bind)
    extras = bind.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master"
        " WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL",
        (name,),
    ).all()
    for kind, extra, _sql in extras:  # the names are taken again below
        op.execute(f'DROP {kind.upper()} "{extra}"')
    create_sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).scalar()
    new = f"{name}_0008_new"
    columns = [c for c in table.columns if c.name != "host"]
    keys = ["host", "path"] if with_host else ["path"]
    op.create_table(
        new,
        *([sa.Column("host", sa.Text, nullable=False)] if with_host else []),
        *[_column(c, keeps_key=name != "queue") for c in columns],
        *_foreign_keys(table),
        *_unique_constraints(table),
        _key(name, keys),
        sqlite_autoincrement="AUTOINCREMENT" in (create_sql or "").upper(),
    )
    names = ", ".join(f'"{c.name}"' for c in columns)
    host = f"'{LOCAL}', " if with_host else ""
    into = f'"host", {names}' if with_host else names
    op.execute(f'INSERT INTO "{new}" ({into}) SELECT {host}{names} FROM "{name}"')
    old = f"{name}_0008_old"
    op.execute(f'ALTER TABLE "{name}" RENAME TO "{old}"')
    op.execute(f'ALTER TABLE "{new}" RENAME TO "{name}"')
    for _kind, _extra, sql in extras:
        op.execute(sql)
    return old


def _column(c: Any, *, keeps_key: bool) -> sa.Column:
    """A reflected column, for the new table (its primary key kept unless ``queue``'s)."""
    return sa.Column(
        c.name,
        c.type,
        nullable=c.nullable,
        primary_key=c.primary_key and keeps_key,
        server_default=None if c.server_default is None else c.server_default.arg,
    )


def _foreign_keys(table: sa.Table) -> list[sa.ForeignKeyConstraint]:
    """The table's foreign keys; one to ``roots`` (renamed away by now) refers to the new one."""
    out = []
    for fk in table.foreign_key_constraints:
        target = fk.referred_table.name
        target = "roots" if target.startswith("roots_0008") else target
        out.append(
            sa.ForeignKeyConstraint(
                [c.name for c in fk.columns],
                [f"{target}.{e.column.name}" for e in fk.elements],
                ondelete=fk.ondelete,
            )
        )
    return out


def _unique_constraints(table: sa.Table) -> list[sa.UniqueConstraint]:
    """Unique constraints other than the one on the path, which this revision changes."""
    out = []
    for uc in table.constraints:
        cols = sorted(c.name for c in uc.columns)
        if isinstance(uc, sa.UniqueConstraint) and cols not in (["path"], ["host", "path"]):
            out.append(sa.UniqueConstraint(*[c.name for c in uc.columns], name=uc.name))
    return out


def _key(name: str, keys: list[str]) -> sa.Constraint:
    if name == "queue":
        return sa.PrimaryKeyConstraint(*keys, name="queue_pkey" if "host" in keys else None)
    return sa.UniqueConstraint(*keys, name=f"uq_{name}_host_path" if "host" in keys else None)
