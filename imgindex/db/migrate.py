"""Schema upgrades, run from code with Alembic on every open of a library.

The installed package carries the migrations as ``imgindex._migrations`` (``pyproject.toml`` maps
the top-level ``migrations/`` folder there); a source checkout uses ``migrations/`` directly.
Alembic itself is imported only when the database is not already at ``SCHEMA_HEAD``, so opening
an up-to-date library stays fast.
"""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, column, func, inspect, make_url, select, table

from imgindex import fsafe
from imgindex.errors import ImgIndexError, LibraryNotFound, SchemaTooNew

log = logging.getLogger(__name__)

_alembic_version = table("alembic_version", column("version_num"))

#: The newest revision this code knows; ``tests/test_migrations.py`` checks it is Alembic's head.
SCHEMA_HEAD = "0008"


def migrations_dir() -> Path:
    """Folder holding ``env.py`` and ``versions/``, installed or in a source checkout."""
    spec = importlib.util.find_spec("imgindex._migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "migrations"


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or None for an empty database."""
    with engine.connect() as conn:
        return revision_of(conn)


def revision_of(conn: Connection) -> str | None:
    """``current_revision`` on an open connection (inside the caller's transaction)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(select(_alembic_version.c.version_num)).scalar()


def known_revisions() -> set[str]:
    """Every revision shipped with this code."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_dir()))
    return {rev.revision for rev in script.walk_revisions()}


def backup(db_path: Path, revision: str) -> Path:
    """Copy the database with SQLite's online backup before changing its schema."""
    dest = db_path.with_name(f"{db_path.name}.before-{revision}.bak")
    with sqlite3.connect(db_path) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    return dest


def upgrade(engine: Engine, db_path: Path | None, target: str = "head") -> None:
    """Upgrade the database to ``target``, backing a SQLite file (at ``db_path``) up first
    when it holds data. A PostgreSQL server runs the whole upgrade in one transaction (its DDL
    is transactional): a failed upgrade leaves nothing changed, so no copy is made."""
    rev = current_revision(engine)
    if (
        rev is not None
        and target != rev
        and db_path is not None
        and engine.dialect.name == "sqlite"
    ):
        log.info("backed up the database to %s before migrating", backup(db_path, rev))
    with engine.begin() as conn:
        upgrade_on(conn, target)


def upgrade_on(conn: Connection, target: str = "head") -> None:
    """Run the migrations up to ``target`` on ``conn``, inside the caller's transaction (on
    PostgreSQL, whose DDL is transactional, a rollback undoes them too)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, target)


def ensure_schema(
    engine: Engine, db: Path | str, *, create: bool = False, read_only: bool = False
) -> None:
    """Bring the database (a SQLite file's path, or a server's URL) to ``SCHEMA_HEAD``; refuse
    one written by a newer imgindex.

    Only ``create`` (``imgindex init``) puts the schema into a database that has none (an
    empty file); a ``read_only`` caller refuses an old schema instead of upgrading it."""
    rev = current_revision(engine)
    if rev == SCHEMA_HEAD:
        return
    if rev is None and not create:
        raise no_library(db)
    _refuse_unknown(rev, db)
    if read_only:
        where = f"the library in {db.parent}" if isinstance(db, Path) else shown(db)
        raise ImgIndexError(
            f"{where} has schema revision {rev}, older than this imgindex reads "
            f"({SCHEMA_HEAD}); a user who can write it must run `imgindex migrate`"
        )
    if not isinstance(db, Path):
        _upgrade_server(engine, db)
        return
    with fsafe.Flock(db.with_name(f"{db.name}.migrate.lock")) as lock:
        lock.exclusive()  # two processes opening an old database: one migrates
        _upgrade_locked(engine, db)


def shown(url: str) -> str:
    """A server's database as a message names it: ``database NAME on HOST``, no password."""
    u = make_url(url)
    host = u.host or u.query.get("host") or "localhost"
    return f"database {u.database} on {host if isinstance(host, str) else host[0]}"


def no_library(db: Path | str) -> LibraryNotFound:
    """The refusal of a database without the schema (only ``imgindex init`` creates one)."""
    where = db if isinstance(db, Path) else shown(db)
    return LibraryNotFound(
        f"{where} holds no imgindex library (it is empty, or another program's); "
        "create one with `imgindex index DIR...` or `imgindex init DIR...` (or point "
        "--data-dir at an existing one)"
    )


def _refuse_unknown(rev: str | None, db: Path | str) -> None:
    if rev is not None and rev not in known_revisions():
        where = f"database {db}" if isinstance(db, Path) else shown(db)
        raise SchemaTooNew(
            f"{where} has schema revision {rev}, newer than this imgindex knows "
            f"({SCHEMA_HEAD}); upgrade imgindex (pip install -U imgindex) or use --data-dir "
            "to open another library"
        )


def _upgrade_locked(engine: Engine, db_path: Path) -> None:
    rev = current_revision(engine)
    if rev == SCHEMA_HEAD:
        return
    _refuse_unknown(rev, db_path)
    upgrade(engine, db_path)


#: The PostgreSQL advisory lock that one migrating process holds (any 64-bit key; "imgindex").
MIGRATE_LOCK = 0x696D67696E646578


def _upgrade_server(engine: Engine, url: str) -> None:
    """Upgrade a server's database under an advisory lock: of several hosts opening an old
    database at once, one migrates and the others find it done."""
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(MIGRATE_LOCK)))
        conn.commit()
        try:
            rev = current_revision(engine)
            if rev != SCHEMA_HEAD:
                _refuse_unknown(rev, url)
                upgrade(engine, None)
        finally:
            conn.execute(select(func.pg_advisory_unlock(MIGRATE_LOCK)))
            conn.commit()
