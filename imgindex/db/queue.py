"""The daemon's ``queue`` table: paths the watcher saw change, processed once ``due_at``
passes (a crash loses nothing: the rows are there at the next start).

Every function works on the queue of the connection's host (``host.host_of``): a host's daemon
processes only its own paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select

from imgindex.db.dialect import insert_missing, upsert
from imgindex.db.host import host_of
from imgindex.db.schema import queue

_CHUNK = 900  # SQL parameters per statement, well under SQLite's limit
_KEY = ("host", "path")
q = queue.c


def _mine(conn: Connection) -> Any:
    """The condition: a row of the connection's host."""
    return q.host == host_of(conn)


def schedule(conn: Connection, due: Mapping[str, float], now: float) -> None:
    """Queue each path to be processed at its time; a path queued already keeps its
    ``enqueued_at`` and takes the new time."""
    host = host_of(conn)
    rows = [{"host": host, "path": p, "due_at": at, "enqueued_at": now} for p, at in due.items()]
    upsert(conn, queue, rows, key=_KEY, update=["due_at"])


def add(conn: Connection, paths: Iterable[str], at: float) -> None:
    """Queue paths due at ``at``; a path queued already is left as it is."""
    host = host_of(conn)
    rows = [{"host": host, "path": p, "due_at": at, "enqueued_at": at} for p in paths]
    insert_missing(conn, queue, rows, _KEY)


def remove(conn: Connection, paths: Sequence[str]) -> None:
    """Drop these paths from the queue."""
    for i in range(0, len(paths), _CHUNK):
        conn.execute(delete(queue).where(_mine(conn), q.path.in_(paths[i : i + _CHUNK])))


def done(conn: Connection, rows: Iterable[Any]) -> None:
    """Drop processed rows, unless queued again since (their ``due_at`` changed)."""
    for r in rows:
        conn.execute(delete(queue).where(_mine(conn), q.path == r.path, q.due_at == r.due_at))


def postpone(conn: Connection, paths: Iterable[str], due_at: float) -> None:
    for path in paths:
        conn.execute(queue.update().where(_mine(conn), q.path == path).values(due_at=due_at))


def due(conn: Connection, now: float, limit: int) -> list[Any]:
    """The first ``limit`` rows ``(path, due_at, enqueued_at)`` due by ``now``, oldest first."""
    stmt = select(q.path, q.due_at, q.enqueued_at).where(_mine(conn), q.due_at <= now)
    return list(conn.execute(stmt.order_by(q.due_at).limit(limit)).all())


def later(conn: Connection, now: float, limit: int = 1000) -> list[Any]:
    """The first ``limit`` rows ``(path, due_at)`` due after ``now``, soonest first."""
    stmt = select(q.path, q.due_at).where(_mine(conn), q.due_at > now)
    return list(conn.execute(stmt.order_by(q.due_at).limit(limit)).all())


def not_yet_due(conn: Connection, now: float) -> set[str]:
    """Every path queued for after ``now`` (a rescan leaves them to their events)."""
    return set(conn.execute(select(q.path).where(_mine(conn), q.due_at > now)).scalars())


def entries(conn: Connection) -> list[Any]:
    """Every row ``(path, due_at)``."""
    return list(conn.execute(select(q.path, q.due_at).where(_mine(conn))).all())


def count(conn: Connection) -> int:
    stmt = select(func.count()).select_from(queue).where(_mine(conn))
    return int(conn.execute(stmt).scalar() or 0)


def next_due(conn: Connection) -> float | None:
    """When the soonest row is due; None when the queue is empty."""
    return conn.execute(select(func.min(q.due_at)).where(_mine(conn))).scalar()
