"""The FAISS cache's changes log: ``index_log`` rows, written by triggers on ``images``
(revision 0004) whenever an indexed vector appears, changes or goes. A FAISS file reflects the
log up to some seq and is caught up from the rows after it."""

from __future__ import annotations

import numpy as np
from sqlalchemy import Connection, delete, select

from imgindex.db import meta
from imgindex.db.dialect import last_autoincrement_id
from imgindex.db.schema import index_log


def log_position(conn: Connection) -> tuple[int, int]:
    """``(head, trimmed)``: the last ``index_log`` seq written, and the seq up to which rows
    were deleted (a FAISS file older than that cannot be caught up from the log)."""
    return last_autoincrement_id(conn, index_log.name), meta.log_trimmed(conn)


def log_head(conn: Connection) -> int:
    """The last ``index_log`` seq written."""
    return log_position(conn)[0]


def logged_since(conn: Connection, seq: int) -> np.ndarray:
    """Ids of images whose indexed vector appeared, changed or went after ``seq``."""
    q = select(index_log.c.image_id).where(index_log.c.seq > seq).distinct()
    return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def trim_log(conn: Connection, seq: int) -> None:
    """Forget log rows up to ``seq`` (a FAISS file reflecting ``seq`` was saved)."""
    conn.execute(delete(index_log).where(index_log.c.seq <= seq))
    meta.set_log_trimmed(conn, max(seq, meta.log_trimmed(conn)))
