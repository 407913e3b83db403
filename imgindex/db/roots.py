"""The ``roots`` table: the folders a library watches and indexes."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Connection, select

from imgindex.db.schema import roots


def add_root(conn: Connection, path: Path) -> int:
    """The id of root ``path``, added when new."""
    existing = conn.execute(select(roots.c.id).where(roots.c.path == str(path))).scalar()
    if existing is not None:
        return existing
    key = conn.execute(roots.insert().values(path=str(path), added_at=time.time()))
    return int(key.inserted_primary_key[0])  # type: ignore[index]


def list_roots(conn: Connection) -> list[tuple[int, Path]]:
    """``(id, path)`` of every root, oldest first."""
    rows = conn.execute(select(roots.c.id, roots.c.path).order_by(roots.c.id)).all()
    return [(rid, Path(p)) for rid, p in rows]


def root_paths(conn: Connection) -> list[Path]:
    """Every root's path, oldest first."""
    return [p for _, p in list_roots(conn)]
