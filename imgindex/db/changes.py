"""The FAISS cache's changes log: ``index_log`` rows, written by triggers on ``images``
(revision 0004) whenever an indexed vector appears, changes or goes. A FAISS file reflects the
log up to some position and is caught up from the rows after it.

A position is ``LogPosition(seq, xmin)``. On SQLite one transaction writes at a time, so rows
commit in ``seq`` order and ``xmin`` is 0: "after the position" is ``seq > position.seq``.

On PostgreSQL several sessions (several hosts ingesting into one database) write at once: a row
with a smaller ``seq`` may commit after one with a larger, and the sequence's value may belong
to a transaction that never commits. Each row records its transaction's id (``xid``, revision
0007), and a position is read from one snapshot: ``seq`` the largest seq that snapshot sees,
``xmin`` the snapshot's xmin (every transaction below it had finished). A row that snapshot did
not see is of a transaction that was running or not yet begun, so its ``xid >= xmin``: the rows
after a position are ``seq > position.seq OR xid >= position.xmin``. That may re-read rows
already applied (replay is idempotent: it re-reads each logged image's current vector) but
never misses one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sqlalchemy import Connection, and_, delete, func, or_, select

from imgindex.db import meta
from imgindex.db.dialect import (
    commits_in_id_order,
    last_autoincrement_id,
    lock_until_commit,
    server_time,
    snapshot_xmin,
)
from imgindex.db.schema import index_log

#: PostgreSQL: log rows are deleted only once the position of a saved file that covers them is
#: this old (server clock), so that another host's file, caught up less often, still finds the
#: rows it lacks; a file older than that is rebuilt, as after any trim.
LOG_RETENTION_S = 3600.0
#: ... and a saved position is remembered as a trim mark at most 16 times in that span.
MARKS_PER_RETENTION = 16


class LogPosition(NamedTuple):
    """How far into the changes log a FAISS index reflects: ``seq``, and on PostgreSQL the
    ``xmin`` of the snapshot it was read in (0 on SQLite)."""

    seq: int
    xmin: int = 0


def log_position(conn: Connection) -> tuple[LogPosition, LogPosition]:
    """``(head, trimmed)``: the log position of ``conn``'s snapshot (read it in one snapshot
    with what is replayed: ``engine.snapshot``), and how far rows were deleted (a FAISS file
    not past that in both parts cannot be caught up from the log: ``replayable``)."""
    trimmed = LogPosition(*meta.log_trimmed(conn))
    if commits_in_id_order(conn):
        return LogPosition(last_autoincrement_id(conn, index_log.name)), trimmed
    q = select(func.coalesce(func.max(index_log.c.seq), 0), snapshot_xmin())
    seq, xmin = conn.execute(q).one()
    return LogPosition(max(int(seq), trimmed.seq), int(xmin)), trimmed


def log_head(conn: Connection) -> LogPosition:
    """The log position of ``conn``'s snapshot."""
    return log_position(conn)[0]


def replayable(at: LogPosition, head: LogPosition, trimmed: LogPosition) -> bool:
    """Whether an index at ``at`` can be brought to ``head`` from the log: no row it lacks was
    trimmed, and it is not ahead of the database (a file of another database, or of a
    restored older copy)."""
    return trimmed.seq <= at.seq <= head.seq and trimmed.xmin <= at.xmin <= head.xmin


def logged_since(conn: Connection, at: LogPosition) -> np.ndarray:
    """Ids of images whose indexed vector appeared, changed or went after position ``at``."""
    after = index_log.c.seq > at.seq
    if not commits_in_id_order(conn):
        after = or_(after, index_log.c.xid >= at.xmin)
    q = select(index_log.c.image_id).where(after).distinct()
    return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def trim_log(conn: Connection, saved: LogPosition, keep_s: float | None = None) -> None:
    """Forget log rows that a file saved at ``saved`` no longer needs.

    SQLite: every row up to ``saved.seq`` (one library folder, one writer, whose readers map
    that file or a newer one).

    PostgreSQL: several hosts keep FAISS files of one database, each at its own position, and
    rows may commit out of ``seq`` order. ``saved`` is remembered as a trim mark (with the
    server's time); rows go only up to the newest mark at least ``keep_s`` old (default
    ``LOG_RETENTION_S``, read at the call), and only those
    of finished transactions: ``seq <= mark.seq AND xid < mark.xmin``. The trimmed position
    grows to cover each mark used, so a file of any host not past it in both parts is rebuilt
    rather than caught up (``replayable``); others never need a deleted row. Trims of several
    hosts take turns (an advisory lock), so the trimmed position never goes back."""
    if commits_in_id_order(conn):
        conn.execute(delete(index_log).where(index_log.c.seq <= saved.seq))
        meta.set_log_trimmed(conn, max(saved.seq, meta.log_trimmed(conn)[0]))
        return
    keep = LOG_RETENTION_S if keep_s is None else keep_s
    lock_until_commit(conn, index_log.name)
    now = server_time(conn)
    marks = meta.log_trim_marks(conn)
    if not marks or now - marks[-1][0] >= keep / MARKS_PER_RETENTION:
        marks.append((now, saved.seq, saved.xmin))
    due = [m for m in marks if m[0] <= now - keep]
    if due:
        _, seq, xmin = max(due)  # the newest
        cond = and_(index_log.c.seq <= seq, index_log.c.xid < xmin)
        conn.execute(delete(index_log).where(cond))
        old = meta.log_trimmed(conn)
        meta.set_log_trimmed(conn, max(seq, old[0]), max(xmin, old[1]))
        marks = [m for m in marks if m[0] > now - keep]
    meta.set_log_trim_marks(conn, marks)


def log_state(conn: Connection) -> tuple[int, int]:
    """``(largest seq, rows)`` of the log as ``conn`` sees it: it changes whenever a change
    commits, a late one (a smaller seq, from another host) included, and not otherwise (a
    position's ``xmin`` moves with any transaction on the server)."""
    row = conn.execute(select(func.max(index_log.c.seq), func.count())).one()
    return int(row[0] or 0), int(row[1])
