"""The ``roots`` table: the folders a library watches and indexes, each on its host.

``add_root``, ``list_roots`` and ``root_paths`` work on the roots of the connection's host
(``host.host_of``): the folders this host walks and watches. ``all_roots`` lists every host's."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Connection, select

from imgindex.db.host import host_of
from imgindex.db.schema import roots


def add_root(conn: Connection, path: Path) -> int:
    """The id of this host's root ``path``, added when new."""
    host = host_of(conn)
    q = select(roots.c.id).where(roots.c.host == host, roots.c.path == str(path))
    existing = conn.execute(q).scalar()
    if existing is not None:
        return existing
    key = conn.execute(roots.insert().values(host=host, path=str(path), added_at=time.time()))
    return int(key.inserted_primary_key[0])  # type: ignore[index]


def list_roots(conn: Connection) -> list[tuple[int, Path]]:
    """``(id, path)`` of every root of this host, oldest first."""
    q = select(roots.c.id, roots.c.path).where(roots.c.host == host_of(conn))
    return [(rid, Path(p)) for rid, p in conn.execute(q.order_by(roots.c.id)).all()]


def root_paths(conn: Connection) -> list[Path]:
    """Every root's path of this host, oldest first."""
    return [p for _, p in list_roots(conn)]


def all_roots(conn: Connection) -> list[tuple[str, Path]]:
    """``(host, path)`` of every root of every host, oldest first."""
    q = select(roots.c.host, roots.c.path).order_by(roots.c.id)
    return [(h, Path(p)) for h, p in conn.execute(q).all()]
