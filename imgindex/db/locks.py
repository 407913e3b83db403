"""Who runs a library's cluster maintenance (partial_fit, consolidation, labels).

SQLite: the library's one writer (the data dir's write lock makes it one). PostgreSQL, where
several hosts write at once: the one session holding a PostgreSQL advisory lock, taken on a
connection kept for that purpose. The server drops the lock with the session, so when the
holding process stops, or its link to the server goes, another writer takes it at its next try.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, func, select, text

log = logging.getLogger(__name__)

#: The advisory lock key of the maintenance ("imgclust"); per database, as advisory locks are.
MAINTENANCE_KEY = 0x696D67636C757374


class Maintenance:
    """This process's claim to the cluster maintenance of one library."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._held = engine.dialect.name != "postgresql"  # SQLite: the writer always holds it

    @property
    def shared(self) -> bool:
        """Whether writers on other hosts may hold it instead (a PostgreSQL library)."""
        return self.engine.dialect.name == "postgresql"

    def try_take(self) -> bool:
        """Hold the maintenance if nobody else does (cheap when held already: one round trip
        checks that the session holding it is alive). Returns whether this process holds it."""
        if not self.shared:
            return True
        if self._held and self._alive():
            return True
        self._drop()
        try:
            self._conn = self.engine.connect()
            got = self._conn.execute(select(func.pg_try_advisory_lock(MAINTENANCE_KEY))).scalar()
            self._conn.commit()
        except Exception as exc:  # the server is away: not held, try again later
            log.debug("cannot take the cluster maintenance: %s", exc)
            self._drop()
            return False
        self._held = bool(got)
        if not self._held:
            self._drop()
        else:
            log.info("this host runs the cluster maintenance now")
        return self._held

    @property
    def held(self) -> bool:
        """Whether this process held it at the last ``try_take`` (SQLite: always)."""
        return self._held

    def _alive(self) -> bool:
        try:
            assert self._conn is not None
            self._conn.execute(select(1)).scalar()
            self._conn.commit()
            return True
        except Exception:
            log.warning("lost the cluster maintenance: its database session ended")
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # a dead session's lock is gone; a live one's ends
                self._conn.close()
            except Exception:  # already broken
                pass
        self._conn = None
        self._held = not self.shared

    def release(self) -> None:
        self._drop()


def maintenance_holder(conn: Connection) -> str | None:
    """The ``application_name`` of the session holding the maintenance on PostgreSQL (the
    host's name, see ``engine.make_engine``), or None when nobody holds it (SQLite: None)."""
    if conn.dialect.name != "postgresql":
        return None
    q = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
    )
    key = MAINTENANCE_KEY
    return conn.execute(q, {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()
