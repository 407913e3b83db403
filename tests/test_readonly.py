"""Opening a library: read commands from a data directory they may not write (another user's,
a read-only mount), and databases that hold no library (only `init` creates one)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli, cli_json, run_process
from imaging import make_photos
from unprivileged import obey_file_modes

from imgindex.db import migrate
from imgindex.db.engine import make_engine

pytestmark = pytest.mark.slow  # commands run without root's powers, or on a read-only mount


@pytest.fixture()
def shared() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="imgindex-ro-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def library(shared: Path) -> tuple[Path, Path]:
    """12 red and 12 blue pictures indexed with k=2; no map cached yet."""
    photos, data = shared / "photos", shared / "data"
    make_photos(photos / "reds", "red", 12)
    make_photos(photos / "blues", "blue", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    return photos, data


def as_reader(data: Path, *args: object) -> subprocess.CompletedProcess:
    """``python -m imgindex --data-dir DATA ARGS`` as a process that file modes apply to
    (root without the capabilities that override them: another uid could not even start an
    interpreter that lives under ``/root`` or in CI's private virtual environment)."""
    command = [sys.executable, "-m", "imgindex", "--data-dir", str(data), *map(str, args)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"},
        preexec_fn=obey_file_modes,
    )


def read_only(folder: Path) -> None:
    """Nobody may write the folder or its files (only root's capabilities could)."""
    folder.chmod(0o555)
    for path in folder.iterdir():
        path.chmod(0o444)


def read_commands(photos: Path, data: Path, out: Path) -> list[list[object]]:
    cid = cli_json(data, "clusters")[0]["id"]
    return [
        ["status", "--json"],
        ["status", "--failed"],
        ["similar", photos / "reds" / "red_000.jpg", "--json"],
        ["clusters", "--json"],
        ["clusters", "show", cid, "--json"],
        ["duplicates", "--json"],
        ["config", "--json"],
        ["export", "--csv", "-"],
        ["report", "--out", out / "report.html"],
    ]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_read_commands_work_for_a_user_who_may_only_read_the_data_dir(library, shared):
    photos, data = library
    out = shared / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    commands = read_commands(photos, data, out)
    read_only(data)
    before = listing(data)
    for args in commands:
        result = as_reader(data, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    assert '"indexed": 24' in as_reader(data, "status", "--json").stdout
    assert listing(data) == before  # nothing written: no map cache, lock, -wal or -shm
    assert (out / "report.html").stat().st_size > 0
    # a user who may only read cannot change settings: one line says why
    result = as_reader(data, "config", "debounce", "2")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1 and "read-only" in result.stderr


def test_a_reader_sees_what_a_running_writer_committed(library):
    """While a writer holds the database open (as the daemon does), its -wal and -shm exist:
    the reader reads through them, seeing commits not yet checkpointed."""
    _photos, data = library
    writer = sqlite3.connect(data / "imgindex.db")
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT OR REPLACE INTO meta VALUES ('daemon.debounce', '7.5')")
        writer.commit()
        read_only(data)
        assert (data / "imgindex.db-wal").stat().st_size > 0
        result = as_reader(data, "config", "debounce", "--json")
        assert result.returncode == 0, result.stderr
        assert '"debounce": 7.5' in result.stdout
    finally:
        writer.close()


def test_an_old_schema_in_a_read_only_dir_asks_for_migrate(shared):
    data = shared / "old"
    data.mkdir()
    db = data / "imgindex.db"
    migrate.upgrade(make_engine(db), db, target="0001")
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("model", "thumbnail"), ("dim", "192")])
    read_only(data)
    before = listing(data)
    result = as_reader(data, "status")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "imgindex migrate" in result.stderr
    assert "0001" in result.stderr and "Traceback" not in result.stderr
    assert listing(data) == before  # no backup, no migration lock
    cli(data, "migrate")  # the owner can
    assert as_reader(data, "status", "--json").returncode == 0


def test_read_commands_work_on_a_read_only_mount(library, tmp_path):
    photos, data = library
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    bind = subprocess.run(["mount", "--bind", str(data), str(mnt)], capture_output=True)
    if bind.returncode:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True)
        if ro.returncode:
            pytest.skip(f"cannot remount read-only here: {ro.stderr.decode().strip()}")
        before = listing(data)
        for args in read_commands(photos, data, tmp_path):
            result = run_process("--data-dir", mnt, *args)
            assert result.returncode == 0, (args, result.stderr)
            assert "Traceback" not in result.stderr and "WARNING" not in result.stderr
        assert listing(data) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- only `init` creates a library --------------------------------------------------------


def test_an_empty_database_is_refused_not_taken_as_a_new_library(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, "red", 3)
    data.mkdir()
    (data / "imgindex.db").touch()
    faiss = data / "vectors.7.faiss"
    faiss.write_bytes(b"a cache file that must survive")
    for args in (
        ["status"],
        ["index"],
        ["similar", photos / "red_000.jpg"],
        ["clusters"],
        ["config", "debounce", "2"],
        ["daemon"],
    ):
        result = run_process("--data-dir", data, *args, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args
        assert "imgindex init" in result.stderr and "Traceback" not in result.stderr
    assert (data / "imgindex.db").stat().st_size == 0 and faiss.exists()
    cli(data, "init", photos, "--model", "thumbnail")  # init creates it in the empty file
    cli(data, "index")
    assert cli_json(data, "status")["indexed"] == 3


def test_an_interrupted_init_is_refused_until_init_runs_again(tmp_path):
    """A database with the schema but no model (init stopped between the two steps)."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos, "red", 2)
    data.mkdir()
    db = data / "imgindex.db"
    migrate.upgrade(make_engine(db), db)
    result = cli(data, "status", code=1)
    assert "imgindex init" in result.stderr and result.stderr.count("\n") == 1
    cli(data, "init", photos, "--model", "thumbnail")
    assert cli_json(data, "status")["model"] == "thumbnail"


def test_a_write_ahead_log_nobody_can_apply_is_refused_in_one_line(library):
    """A crashed writer's -wal without its -shm, in a folder the reader may not write: the
    database file alone is out of date, so it is not read."""
    _photos, data = library
    crashed = data.parent / "crashed"
    crashed.mkdir()
    writer = sqlite3.connect(data / "imgindex.db")
    try:  # copy the database and its log while a writer has them open
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT OR REPLACE INTO meta VALUES ('daemon.debounce', '7.5')")
        writer.commit()
        shutil.copy(data / "imgindex.db", crashed / "imgindex.db")
        shutil.copy(data / "imgindex.db-wal", crashed / "imgindex.db-wal")
    finally:
        writer.close()
    read_only(crashed)
    result = as_reader(crashed, "status")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "imgindex.db-wal" in result.stderr
