"""Shared fixtures: every test isolated from the user's home and environment; the real
corpora in ../shared (skipped when absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg import postgres_server, postgres_url, private_postgres  # noqa: F401  (fixtures: a real PostgreSQL)

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"

#: Read by imgindex (or by what it starts) from the environment; none of them leaks into a test.
REMOVED = (
    "IMGINDEX_DATA_DIR",
    "STATE_DIRECTORY",
    "IMGINDEX_WEIGHTS_MIRROR",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "TORCH_HOME",
    "IMGINDEX_DATABASE_URL",
    "IMGINDEX_HOST",
)


def _isolate(mp: pytest.MonkeyPatch, home: Path) -> Path:
    """Point HOME and the XDG folders at ``home``; remove the variables in ``REMOVED``."""
    mp.setenv("HOME", str(home))
    for name, sub in (
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        mp.setenv(name, str(home / sub))
    for name in REMOVED:
        mp.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The isolation below for the whole session, so module-scoped fixtures have it too."""
    with pytest.MonkeyPatch.context() as mp:
        yield _isolate(mp, tmp_path_factory.mktemp("session-home"))


@pytest.fixture(autouse=True)
def isolated_environment(
    isolated_session: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Every test (and every process it starts) runs with a fresh, empty home of its own and
    XDG folders in it, and without the variables in ``REMOVED``: nothing a test does reads or
    writes the user's ``~/.local/share/imgindex``, a data dir named by their shell, or a
    systemd socket. Tests still change variables with ``monkeypatch`` (undone after each)."""
    return _isolate(monkeypatch, tmp_path_factory.mktemp("home"))


def corpus(name: str) -> Path:
    """Path of ``../shared/corpus/NAME``; skips the test when it is not there."""
    path = SHARED_CORPUS / name
    if not path.is_dir():
        pytest.skip(f"real corpus {path} is absent (it lives in ../shared, beside the repository)")
    return path


#: The second backend's run of each test is part of the full suite, not of the quick run.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test of a module that uses this (``pytestmark = pytest.mark.usefixtures("backend")``)
    runs twice: on the default SQLite file, and with ``IMGINDEX_DATABASE_URL`` naming a fresh
    database on a real PostgreSQL server, so every library the test makes lives there (and
    every process it starts inherits it)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        monkeypatch.setenv("IMGINDEX_DATABASE_URL", server.create_database())
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``sqlite_only`` (it is about the SQLite file itself) runs once."""
    keep = [
        item
        for item in items
        if not (item.get_closest_marker("sqlite_only") and "[postgresql" in item.name)
    ]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An engine on an empty library database of each backend (a SQLite file, or a fresh
    database on the session's PostgreSQL server), migrated to head by the migrations."""
    from imgindex.db import migrate
    from imgindex.db.engine import make_engine

    if request.param == "sqlite":
        db: Path | str = tmp_path / "imgindex.db"
        path: Path | None = tmp_path / "imgindex.db"
    else:
        db, path = request.getfixturevalue("postgres_server").create_database(), None
    eng = make_engine(db)
    assert migrate.current_revision(eng) is None
    migrate.upgrade(eng, path)
    try:
        yield eng
    finally:
        eng.dispose()
