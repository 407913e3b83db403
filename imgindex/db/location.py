"""Where a library's table of record is: the SQLite file in its data dir (the default, which
needs no server), or a PostgreSQL database for a library that spans hosts.

A PostgreSQL library is named by ``--database URL`` or ``IMGINDEX_DATABASE_URL``; ``imgindex
init --database URL`` records the URL in the data dir (``database.url``) so that every later
command on that host finds it. A password is never stored there nor printed: libpq reads it from
``~/.pgpass`` or ``PGPASSWORD``, and one given in the URL is used for this process only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from imgindex import fsafe, names
from imgindex.errors import ImgIndexError
from imgindex.paths import LibraryPaths

#: The environment variable naming a PostgreSQL library (as ``--database`` does).
DATABASE_ENV = "IMGINDEX_DATABASE_URL"
_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


class DatabaseConflict(ImgIndexError):
    """The database named does not match the one the data dir belongs to."""


@dataclass(frozen=True)
class Location:
    """A library's table of record: ``url`` (PostgreSQL) or the SQLite file of ``paths``."""

    paths: LibraryPaths
    url: str | None = None

    @property
    def target(self) -> Path | str:
        """What ``make_engine`` and ``ensure_schema`` take: the file's path or the URL."""
        return self.url if self.url is not None else self.paths.db

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    def describe(self) -> dict[str, Any]:
        """The backend and where it is, for ``status`` (never a password)."""
        if self.url is None:
            return {"backend": "sqlite", "path": str(self.paths.db)}
        return describe_url(self.url)

    def shown(self) -> str:
        return shown(self.describe())


def describe_url(url: str) -> dict[str, Any]:
    """A PostgreSQL URL's server, database and user, for ``status`` (never a password)."""
    u = make_url(url)
    host = u.host or u.query.get("host") or "localhost"
    return {
        "backend": "postgresql",
        "host": host if isinstance(host, str) else host[0],
        "port": u.port,
        "database": u.database,
        "user": u.username,
    }


def shown(described: dict[str, Any]) -> str:
    """``Location.describe()`` as one line: ``sqlite /path/imgindex.db`` or ``postgresql
    database D on HOST:PORT as USER``."""
    if described["backend"] == "sqlite":
        return f"sqlite {names.shown(described['path'])}"
    port = f":{described['port']}" if described.get("port") else ""
    user = f" as {described['user']}" if described.get("user") else ""
    return f"postgresql database {described['database']} on {described['host']}{port}{user}"


def parse_url(raw: str) -> URL:
    """A PostgreSQL URL, checked; anything else is one clear error."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise ImgIndexError(
            "--database takes a URL like postgresql://USER@HOST/DATABASE (the password in "
            "~/.pgpass or PGPASSWORD)"
        ) from None
    if url.drivername not in _SCHEMES:
        raise ImgIndexError(
            f"--database takes a postgresql:// URL, not {url.drivername}:// (a SQLite library "
            "needs none: it lives in the data dir)"
        )
    if not url.database:
        raise ImgIndexError("the --database URL names no database: postgresql://USER@HOST/DATABASE")
    return url


def url_for(raw: str) -> str:
    """A checked PostgreSQL URL as the engine takes it (with its password, if any)."""
    return parse_url(raw).render_as_string(hide_password=False)


def without_password(url: URL) -> str:
    """The URL as it may be stored and compared: scheme ``postgresql``, no password."""
    bare = URL.create(
        "postgresql", url.username, None, url.host, url.port, url.database, url.query
    )  # ``URL.set`` ignores None: it cannot drop a password
    return bare.render_as_string(hide_password=False)


def locate(paths: LibraryPaths, explicit: str | None = None) -> Location:
    """Where the library of data dir ``paths`` keeps its table of record.

    ``explicit`` (``--database``), else ``IMGINDEX_DATABASE_URL``, else the URL recorded in
    the data dir, else its SQLite file. A URL that differs from the recorded one, or given for
    a data dir that holds a SQLite library, is refused: a data dir belongs to one library."""
    given = explicit or os.environ.get(DATABASE_ENV) or None
    recorded = recorded_url(paths)
    if given is None:
        return Location(paths, recorded)
    url = parse_url(given)
    if recorded is not None and without_password(url) != recorded:
        raise DatabaseConflict(
            f"data dir {paths.root} belongs to the library in {recorded}, not "
            f"{without_password(url)}; use another --data-dir for another library"
        )
    if recorded is None and paths.db.exists() and paths.db.stat().st_size > 0:
        raise DatabaseConflict(
            f"data dir {paths.root} holds a SQLite library; `imgindex migrate --to URL` moves "
            "it to PostgreSQL (or use another --data-dir)"
        )
    return Location(paths, url.render_as_string(hide_password=False))


def recorded_url(paths: LibraryPaths) -> str | None:
    """The URL ``init --database`` recorded in the data dir (None: none)."""
    try:
        text = paths.database_url.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return without_password(parse_url(text)) if text else None


def record(location: Location) -> None:
    """Record a PostgreSQL library's URL, without its password, in the data dir (atomically)."""
    if location.url is None:
        return
    text = without_password(make_url(location.url)) + "\n"
    fsafe.atomic_write(location.paths.database_url, lambda f: f.write(text), text=True)
