"""Schema migrations: from the first revision with data to head, newer databases refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import cli, cli_json
from imaging import make_photos

from imgindex.db import migrate
from imgindex.db.engine import make_engine
from imgindex.db.schema import metadata
from imgindex.errors import SchemaTooNew
from imgindex.library import Library


def test_schema_head_constant_is_alembics_head():
    script = ScriptDirectory(str(migrate.migrations_dir()))
    assert script.get_current_head() == migrate.SCHEMA_HEAD


def test_migrations_build_exactly_the_schema_the_code_queries(tmp_path):
    engine = make_engine(tmp_path / "x.db")
    migrate.ensure_schema(engine, tmp_path / "x.db", create=True)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _v1_library(tmp_path: Path, revision: str = "0001") -> tuple[Path, Path]:
    """A database at ``revision`` holding two indexed images of real files."""
    photos = tmp_path / "photos"
    files = make_photos(photos, "red", 2)
    data = tmp_path / "data"
    data.mkdir()
    db = data / "imgindex.db"
    migrate.upgrade(make_engine(db), db, target=revision)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("model", "thumbnail"), ("dim", "192"), ("index_version", "1")],
        )
        conn.execute(
            "INSERT INTO roots (id, path, added_at) VALUES (1, ?, ?)",
            (str(photos.resolve()), time.time()),
        )
        for i, f in enumerate(files):
            st = f.stat()
            vec = np.zeros(192, np.float32)
            vec[i] = 1.0
            conn.execute(
                "INSERT INTO images (path, root_id, size, mtime_ns, content_hash, status, model,"
                " vector, updated_at) VALUES (?, 1, ?, ?, ?, 'indexed', 'thumbnail', ?, ?)",
                (str(f.resolve()), st.st_size, st.st_mtime_ns, f"h{i}", vec.tobytes(), 0.0),
            )
    return photos, data


def test_upgrade_from_first_revision_keeps_data_and_backs_up(tmp_path):
    _photos, data = _v1_library(tmp_path)
    status = cli_json(data, "status")  # opening upgrades
    assert status["indexed"] == 2 and status["index_size"] == 2
    assert (data / "imgindex.db.before-0001.bak").exists()
    with sqlite3.connect(data / "imgindex.db") as conn:
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        assert head == migrate.SCHEMA_HEAD
        assert conn.execute("SELECT count(*) FROM images WHERE retry_after IS NULL").fetchone() == (
            2,
        )
    with sqlite3.connect(data / "imgindex.db.before-0001.bak") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"
    # the upgraded library keeps working: unchanged files are not re-embedded
    report = cli_json(data, "index")
    assert report["unchanged"] == 2 and report["embedded"] == 0
    assert cli_json(data, "status")["clusters"] == 2


def test_migrate_command_upgrades(tmp_path):
    _, data = _v1_library(tmp_path)
    cli(data, "migrate")
    engine = make_engine(data / "imgindex.db")
    assert migrate.current_revision(engine) == migrate.SCHEMA_HEAD


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    _, data = _v1_library(tmp_path)
    cli(data, "status")
    with sqlite3.connect(data / "imgindex.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match="newer than this imgindex"):
        Library.open(data)
    result = cli(data, "status", code=1)
    assert result.stderr.startswith("error: database") and "9999" in result.stderr


def test_upgraded_library_logs_index_changes_and_keeps_them_through_later_revisions(tmp_path):
    """From 0001 with data to head: the 0004 triggers exist after 0005 added columns, an old
    FAISS file is replaced, and a deletion reaches readers through the changes log."""
    _photos, data = _v1_library(tmp_path)
    (data / "vectors.faiss").write_bytes(b"IMGIDX01 an index file of the old format")
    cli(data, "index")
    assert not (data / "vectors.faiss").exists()
    with sqlite3.connect(data / "imgindex.db") as conn:
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
        assert triggers == {"images_log_insert", "images_log_update", "images_log_delete"}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(images)")}
        assert {"label", "phash"} <= columns
        before = conn.execute("SELECT count(*) FROM index_log").fetchone()[0]
        conn.execute("DELETE FROM images WHERE id = (SELECT min(id) FROM images)")
        assert conn.execute("SELECT count(*) FROM index_log").fetchone()[0] == before + 1
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 1


def test_upgrade_to_ctimes_retries_a_failed_file_once_and_keeps_indexed_ones(tmp_path):
    """0005 rows have no ctime: an indexed file is still unchanged, a failed one (it could not
    be read, say) is tried again once, then only when its ctime changes."""
    photos, data = _v1_library(tmp_path, "0005")
    locked = make_photos(photos, "blue", 1, start=9)[0].resolve()
    st = locked.stat()
    with sqlite3.connect(data / "imgindex.db") as conn:
        conn.execute(
            "INSERT INTO images (path, root_id, size, mtime_ns, status, reason, updated_at)"
            " VALUES (?, 1, ?, ?, 'failed', 'cannot read: Permission denied', 0.0)",
            (str(locked), st.st_size, st.st_mtime_ns),
        )
    report = cli_json(data, "index")
    assert report["unchanged"] == 2 and report["embedded"] == 1 and report["failed"] == 0
    with sqlite3.connect(data / "imgindex.db") as conn:
        ctime = conn.execute("SELECT ctime_ns FROM images WHERE path = ?", (str(locked),))
        assert ctime.fetchone()[0] == locked.stat().st_ctime_ns
        assert conn.execute("SELECT count(*) FROM images WHERE ctime_ns IS NULL").fetchone() == (2,)
    assert cli_json(data, "index")["unchanged"] == 3


def test_upgrade_to_log_xids_keeps_the_log_and_a_saved_file(tmp_path):
    """0006 with data and a saved FAISS file: 0007 adds ``index_log.xid`` (0 on SQLite) as a
    plain ALTER TABLE, so the logged rows and the triggers stay; the file of the older
    version is still used (its record has no xmin) and a deletion reaches readers."""
    _photos, data = _v1_library(tmp_path, "0006")
    cli(data, "index")  # upgrades, saves a file
    files = sorted(data.glob("vectors.*.faiss"))
    assert len(files) == 1
    with sqlite3.connect(data / "imgindex.db") as conn:
        columns = {r[1]: r for r in conn.execute("PRAGMA table_info(index_log)")}
        assert columns["xid"][3] == 1 and columns["xid"][4] == "0"  # NOT NULL DEFAULT 0
        key = f"cache.{files[0].name}"
        record = json.loads(
            conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
        )
        record.pop("xmin")  # as a version before 0007 recorded it
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(record), key))
        conn.execute("DELETE FROM images WHERE id = (SELECT min(id) FROM images)")
        assert conn.execute("SELECT xid FROM index_log").fetchall() == [(0,)]
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 1
    assert sorted(data.glob("vectors.*.faiss")) == files  # the reader overlaid the old file


def test_upgrade_to_hosts_keeps_every_row_the_librarys_own_with_its_ids_and_triggers(tmp_path):
    """Revision 0008 rebuilds roots, images and queue on SQLite: the 0006 library's rows keep
    their ids, belong to the library's one host (``""``), ids handed out are not handed out
    again, the changes log's triggers fire, and a root's images still go with it."""
    shutil.copytree(Path(__file__).parent / "data" / "library-0006", tmp_path / "old")
    data = tmp_path / "old" / "data"
    db = data / "imgindex.db"
    query = "SELECT id, path, status, vector FROM images ORDER BY id"
    with sqlite3.connect(db) as conn:
        before = conn.execute(query).fetchall()
        (seq,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
    assert cli_json(data, "status")["indexed"] == 12  # opening upgrades
    with sqlite3.connect(db) as conn:
        assert conn.execute(query).fetchall() == before
        for table in ("roots", "images"):
            assert conn.execute(f"SELECT DISTINCT host FROM {table}").fetchall() == [("",)]
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone() == (
            seq,
        )
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not any("0008" in t for t in tables)
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
        assert triggers == {"images_log_insert", "images_log_update", "images_log_delete"}
        logged = conn.execute("SELECT count(*) FROM index_log").fetchone()[0]
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM roots")  # a root's images go with it, each logged
        assert conn.execute("SELECT count(*) FROM images").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM index_log").fetchone()[0] == logged + 12
        conn.execute("INSERT INTO roots (id, host, path, added_at) VALUES (1, '', '/', 0)")
        conn.execute(
            "INSERT INTO images (host, path, root_id, size, mtime_ns, status, updated_at)"
            " VALUES ('', '/x.jpg', 1, 1, 1, 'failed', 0)"
        )
        assert conn.execute("SELECT max(id) FROM images").fetchone()[0] == seq + 1
