"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, a cluster of its own in
a temp dir, listening on a Unix socket only, run as the ``postgres`` user (the server refuses
to run as root). Tests that need it skip with a reason when it cannot start here."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "postgres"  # the cluster's OS user and its superuser role


@dataclass
class Server:
    """A running cluster: its socket directory and a counter for fresh database names.

    ``stop``, ``start`` and ``restart`` take the server away and bring it back (a test's own
    server, ``private_postgres``: never the session's); the socket directory stays, so the URLs
    handed out stay valid across them."""

    socket_dir: Path
    names: itertools.count

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"t{next(self.names)}"
        with psycopg.connect(host=str(self.socket_dir), user=USER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    @property
    def data(self) -> Path:
        return self.socket_dir / "data"

    @property
    def log(self) -> Path:
        return self.socket_dir / "log"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} -c fsync=off"
        )
        _pg_ctl(self, "-o", options, "-l", self.log, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once (``immediate``: every client's connection is cut, as when
        the server crashes or the network goes); its data stays for ``start``."""
        _pg_ctl(self, "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        """Stop the server (cutting every connection) and start it again."""
        self.stop()
        self.start()


def _pg_ctl(server: Server, *args: str | Path) -> None:
    bindir = _bindir()
    assert bindir is not None
    _as_postgres(bindir / "pg_ctl", "-D", server.data, *args)


def _bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None: ``pg_config --bindir``, else Debian's
    newest server (``pg_config`` may be libpq-dev's, whose bindir has no server)."""
    found = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        found.append(Path(out.stdout.strip()))
    servers = Path("/usr/lib/postgresql").glob("*/bin")  # 15/bin, 16/bin: the newest first
    found += sorted(
        servers, key=lambda b: [int(n) for n in b.parent.name.split(".") if n.isdigit()]
    )[::-1]
    return next((b for b in found if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)


def _why_not() -> str | None:
    """Why no server can start here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    if _bindir() is None:
        return "no PostgreSQL server here (apt-get install postgresql)"
    if os.geteuid() != 0:
        return "starting a cluster as the postgres user needs root"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user"
    return None


def _as_postgres(*args: str | Path) -> None:
    subprocess.run(["runuser", "-u", USER, "--", *map(str, args)], check=True, capture_output=True)


def _new_server() -> Iterator[Server]:
    """A fresh cluster in a temp dir, running; stopped and removed afterwards (skips the test
    when no server can start here)."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    bindir = _bindir()
    assert bindir is not None
    top = Path(tempfile.mkdtemp(prefix="imgindex-pg-"))
    entry = pwd.getpwnam(USER)
    os.chown(top, entry.pw_uid, entry.pw_gid)
    top.chmod(0o755)  # the socket is reachable by processes that obey file modes (tests)
    server = Server(top, itertools.count())
    _as_postgres(bindir / "initdb", "-D", server.data, "-A", "trust", "-U", USER, "--no-sync")
    try:
        server.start()
    except subprocess.CalledProcessError:  # CI always has a server: say why it did not start
        pytest.fail(f"PostgreSQL did not start:\n{server.log.read_text(errors='replace')}")
    try:
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    """One cluster for the session, stopped (and removed) at its end."""
    yield from _new_server()


@pytest.fixture
def postgres_url(postgres_server: Server) -> str:
    """A fresh empty database on the session's server, as a SQLAlchemy URL."""
    return postgres_server.create_database()


@pytest.fixture
def private_postgres() -> Iterator[Server]:
    """A cluster of this test's own, which it may ``stop``, ``start`` and ``restart`` (a
    database restarted, a network cut) without disturbing other tests."""
    yield from _new_server()
