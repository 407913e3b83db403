"""Engines for the library's table of record: a SQLite file (its pragmas, read-only opening) or
a PostgreSQL server; one-snapshot reads, the plain connections the decode workers use, and what
a lost server looks like (``is_disconnect``, ``DatabaseUnavailable``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from sqlalchemy import (
    Connection,
    Engine,
    ExceptionContext,
    create_engine,
    event,
    literal,
    make_url,
    select,
)
from sqlalchemy.exc import DBAPIError

from imgindex.db.location import describe_url, shown
from imgindex.errors import DatabaseUnavailable, ImgIndexError

if TYPE_CHECKING:
    import psycopg

BUSY_TIMEOUT_MS = 30_000


def is_url(db: Path | str) -> bool:
    """Whether ``db`` names a database server (``postgresql://...``) rather than a file."""
    return isinstance(db, str) and db.split(":", 1)[0].split("+", 1)[0] == "postgresql"


def make_engine(db: Path | str, *, read_only: bool = False, client: str = "imgindex") -> Engine:
    """Engine for ``db``: a path is a SQLite file, a ``postgresql://`` URL a server, where
    ``client`` names the sessions (``pg_stat_activity.application_name``: which host)."""
    if is_url(db):
        return _postgresql_engine(str(db), read_only, client)
    return _sqlite_engine(Path(db), read_only)


def _postgresql_engine(url: str, read_only: bool, client: str) -> Engine:
    """A PostgreSQL engine through psycopg 3 (``imgindex[postgres]``); a ``read_only`` one's
    transactions are read-only on the server."""
    scheme, rest = url.split("://", 1)
    if scheme == "postgresql":
        url = f"postgresql+psycopg://{rest}"
    args: dict[str, Any] = {"application_name": client[:63]}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    engine = create_engine(url, connect_args=args, pool_pre_ping=True)

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        """A lost server is one DatabaseUnavailable that names it, wherever it is met (a
        pre-ping's is SQLAlchemy's own business: it reconnects)."""
        if context.is_pre_ping:
            return None
        if context.is_disconnect or _lost(context.original_exception):
            context.is_disconnect = True  # the pool drops the connection
            return unavailable(url, context.original_exception)
        return None

    return engine


#: SQLSTATEs of a server going away: shut down by an administrator, crashed, not ready yet.
_LOST_STATES = ("57P01", "57P02", "57P03")
#: Refusals at connect time (no SQLSTATE) that pass once the server is up (or less busy).
_TRANSIENT_REFUSALS = ("the database system is", "too many clients", "too many connections")


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` says the database server went away (down, restarting, the network cut)
    rather than anything about the statement or the data: a pass stops at it instead of
    blaming a file, and the daemon waits for the server. SQLite never goes away."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or _lost(exc.orig)
    return _lost(exc)


def _lost(exc: BaseException | None) -> bool:
    """A psycopg error of a connection that failed, broke or was closed by the server."""
    try:
        import psycopg
    except ImportError:
        return False
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    if state is not None:
        return state.startswith("08") or state in _LOST_STATES
    text = str(exc)
    if "FATAL:" in text:  # the server answered: a missing database or a wrong password stay
        return any(refusal in text for refusal in _TRANSIENT_REFUSALS)
    return True  # refused, no socket, closed unexpectedly, "the connection is closed"


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The error a lost server ``url`` is to a user: it names the server (never a password)
    and says what the connection said."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or ["the connection was lost"])[0]
    return DatabaseUnavailable(shown(describe_url(url)), first)


def ping(engine: Engine) -> None:
    """One round trip to the database: raises (DatabaseUnavailable for a lost server) unless
    it answers."""
    with engine.connect() as conn:
        conn.execute(select(literal(1))).scalar()


def _sqlite_engine(db_path: Path, read_only: bool) -> Engine:
    """Engine for one SQLite file: WAL, busy timeout, foreign keys, NORMAL sync under WAL.

    ``read_only``: for a reader that cannot write the data directory (a read-only mount,
    another user's library); its connections never write (see ``connect_read_only``).
    """
    if read_only:
        engine = create_engine(f"sqlite:///{db_path}", creator=lambda: connect_read_only(db_path))
    else:
        engine = create_engine(f"sqlite:///{db_path}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        _set_pragmas(dbapi_conn, read_only)

    return engine


def _set_pragmas(dbapi_conn: Any, read_only: bool) -> None:
    """Every new SQLite connection: wait for a busy writer, WAL (a reader: write nothing),
    foreign keys enforced."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if read_only:  # the database is in WAL mode already (it is persistent)
        cur.execute("PRAGMA query_only=ON")
    else:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """A connection that never writes: ``mode=ro``, which reads a WAL database when its
    ``-shm`` file exists (a writer has it open) or can be created. When neither holds (a
    read-only folder that no writer has open), ``immutable=1``, as SQLite documents for
    that case: safe only when no write is pending, so a non-empty ``-wal`` is refused."""
    uri = db_path.absolute().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorname", "") not in _NO_SHM:
            raise
    wal = db_path.with_name(f"{db_path.name}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise ImgIndexError(
            f"{wal} holds changes not yet written to the database, and {db_path.parent} is "
            "read-only here; run `imgindex status` once as a user who can write it"
        )
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)


_NO_SHM = ("SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN")  # the -shm file cannot be created


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction: every read on the connection sees the same commits (WAL on
    SQLite, REPEATABLE READ on PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
        return
    with engine.connect() as conn, conn.begin():
        if not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN")  # pysqlite runs a SELECT in autocommit otherwise
        yield conn


#: A decode worker's connection: the DB-API's own (sqlite3, or psycopg), without SQLAlchemy.
WorkerConnection = Union[sqlite3.Connection, "psycopg.Connection[Any]"]


def worker_connection(db: Path | str) -> WorkerConnection:
    """A plain DB-API connection for one decode worker thread: its lookups hold the GIL for
    microseconds, not SQLAlchemy's milliseconds (see ``images.indexed_id_with_hash``). A
    server's is in autocommit: each lookup sees the latest commits, as SQLite's does."""
    if is_url(db):
        import psycopg

        conninfo = make_url(str(db)).set(drivername="postgresql")
        return psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True)
    return sqlite3.connect(db, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
