"""Several hosts, one library database (revision 0008): each host walks, watches and queues only
its own roots and files; the same path on two hosts is two files; a host never deletes, moves
or processes another host's rows. Hosts on one machine: ``IMGINDEX_HOST`` (the CLI) or
``db.host.for_host`` (an engine of one host).

Here the CLI's hosts share one data directory in turn (one SQLite file); the storage calls run
on SQLite and on a real PostgreSQL server (``tests/pg.py``)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from helpers import cli, cli_json
from imaging import make_photos
from sqlalchemy import text

from imgindex import hosts
from imgindex.daemon import Daemon
from imgindex.db import images, meta, migrate, queue, roots
from imgindex.db.host import for_host
from imgindex.errors import ImgIndexError
from imgindex.library import Library

#: seconds of a real PostgreSQL server or service process each: the full suite, not the quick run
pytestmark = pytest.mark.slow


def _row(path: str, root_id: int) -> dict[str, object]:
    return {"path": path, "root_id": root_id, "size": 1, "mtime_ns": 1, "updated_at": 0.0}


def _vec(i: int) -> np.ndarray:
    v = np.zeros(4, np.float32)
    v[i % 4] = 1.0
    return v


# --- which host this is -------------------------------------------------------------------


def test_the_host_is_the_machines_name_unless_imgindex_host_names_one(monkeypatch):
    assert hosts.this_host() == socket.gethostname()
    assert hosts.row_host("postgresql") == socket.gethostname()
    # a SQLite file is one machine's, whichever: moved elsewhere it still owns its rows
    assert hosts.row_host("sqlite") == hosts.LOCAL == ""
    monkeypatch.setenv("IMGINDEX_HOST", "nas-1")
    assert hosts.this_host() == hosts.row_host("sqlite") == hosts.row_host("postgresql") == "nas-1"


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 256])
def test_a_host_name_that_is_not_one_is_refused_in_one_line(bad, monkeypatch, tmp_path):
    monkeypatch.setenv("IMGINDEX_HOST", bad)
    with pytest.raises(ImgIndexError, match="IMGINDEX_HOST="):
        hosts.this_host()
    make_photos(tmp_path / "photos", "red", 1)
    result = cli(tmp_path / "data", "init", tmp_path / "photos", "--model", "thumbnail", code=1)
    assert result.stderr.startswith("error: IMGINDEX_HOST=") and result.stderr.count("\n") == 1


# --- the storage calls, on both backends ---------------------------------------------------


def test_the_same_path_on_two_hosts_is_two_roots_and_two_rows(engine):
    a, b = for_host(engine, "a"), for_host(engine, "b")
    with a.begin() as conn:
        ra = roots.add_root(conn, Path("/srv/photos"))
        images.insert_indexed(conn, _row("/srv/photos/x.jpg", ra), "m", _vec(0))
        meta.set_mount_points(conn, ["/srv/photos/usb"])
    with b.begin() as conn:
        rb = roots.add_root(conn, Path("/srv/photos"))
        images.insert_indexed(conn, _row("/srv/photos/x.jpg", rb), "m", _vec(1))
        assert meta.mount_points(conn) == []  # a's disks are a's
    assert ra != rb
    with a.connect() as conn:
        assert roots.list_roots(conn) == [(ra, Path("/srv/photos"))]
        mine = images.find_by_path(conn, "/srv/photos/x.jpg")
        assert (mine.host, mine.root_id) == ("a", ra)
        assert roots.all_roots(conn) == [("a", Path("/srv/photos")), ("b", Path("/srv/photos"))]
        assert images.count_indexed(conn) == 2  # the library is every host's
    with b.connect() as conn:
        assert images.find_by_path(conn, "/srv/photos/x.jpg").root_id == rb
        assert images.paths_at_or_under(conn, "/srv/photos") == ["/srv/photos/x.jpg"]


def test_a_host_never_moves_or_changes_another_hosts_row(engine):
    a, b = for_host(engine, "a"), for_host(engine, "b")
    with a.begin() as conn:
        ra = roots.add_root(conn, Path("/p"))
        theirs = images.insert_indexed(conn, _row("/p/old.jpg", ra), "m", _vec(0))
    with b.begin() as conn:
        rb = roots.add_root(conn, Path("/p"))
        assert images.move_paths(conn, "/p/old.jpg", "/p/new.jpg", rb) == (0, [])
        images.update_file(conn, theirs, {"path": "/p/stolen.jpg", "root_id": rb})
    with a.connect() as conn:
        row = images.find_by_id(conn, theirs)
        assert (row.host, row.path, row.root_id) == ("a", "/p/old.jpg", ra)


def test_a_host_processes_only_its_own_queue(engine):
    a, b = for_host(engine, "a"), for_host(engine, "b")
    with a.begin() as conn:
        queue.schedule(conn, {"/q/x.jpg": 5.0, "/q/y.jpg": 6.0}, now=1.0)
    with b.begin() as conn:
        queue.add(conn, ["/q/x.jpg"], at=8.0)  # the same path, b's own entry
        due = queue.due(conn, now=100.0, limit=10)
        assert [(r.path, r.due_at) for r in due] == [("/q/x.jpg", 8.0)]
        assert queue.count(conn) == 1 and queue.next_due(conn) == 8.0
        queue.remove(conn, ["/q/y.jpg"])
        queue.postpone(conn, ["/q/x.jpg", "/q/y.jpg"], 50.0)
        queue.done(conn, queue.due(conn, now=100.0, limit=10))
        assert queue.entries(conn) == []
    with a.connect() as conn:
        assert sorted((r.path, r.due_at) for r in queue.entries(conn)) == [
            ("/q/x.jpg", 5.0),
            ("/q/y.jpg", 6.0),
        ]


def test_rows_from_before_hosts_keep_working_as_the_librarys_own(engine):
    """A database at revision 0006 with rows: upgraded, they are ``hosts.LOCAL``'s, a path may
    then be another host's too, and the changes log still follows the images table."""

    def name(path: str) -> str | bytes:  # as FsPath stores it: PostgreSQL keeps bytes
        return path.encode() if engine.dialect.name == "postgresql" else path

    with engine.begin() as conn:  # back to 0006, empty, then rows as 0006 wrote them
        cfg = Config()
        cfg.set_main_option("script_location", str(migrate.migrations_dir()))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO roots (path, added_at) VALUES (:p, 0)"), {"p": name("/r")})
        root = conn.execute(text("SELECT id FROM roots")).scalar()
        for i in (1, 2, 3):
            conn.execute(
                text(
                    "INSERT INTO images (path, root_id, size, mtime_ns, status, model, vector,"
                    " updated_at) VALUES (:p, :r, 1, 1, 'indexed', 'm', :v, 0)"
                ),
                {"p": name(f"/r/{i}.jpg"), "r": root, "v": _vec(i).tobytes()},
            )
        last = conn.execute(text("SELECT max(id) FROM images")).scalar()
        conn.execute(text("DELETE FROM images WHERE id = :i"), {"i": last})  # not handed out again
        conn.execute(
            text("INSERT INTO queue (path, due_at, enqueued_at) VALUES (:p, 1, 1)"),
            {"p": name("/r/q")},
        )
    migrate.upgrade(engine, None)
    local, other = for_host(engine, hosts.LOCAL), for_host(engine, "b")
    with local.begin() as conn:
        assert roots.list_roots(conn) == [(root, Path("/r"))]
        assert images.find_by_path(conn, "/r/1.jpg").host == ""
        assert [r.path for r in queue.entries(conn)] == ["/r/q"]
        log_before = conn.execute(text("SELECT count(*) FROM index_log")).scalar()
        images.delete_images(conn, [images.find_by_path(conn, "/r/2.jpg").id])
        assert conn.execute(text("SELECT count(*) FROM index_log")).scalar() == log_before + 1
    with other.begin() as conn:
        rb = roots.add_root(conn, Path("/r"))
        new = images.insert_indexed(conn, _row("/r/1.jpg", rb), "m", _vec(0))
        assert new > last  # ids are never reused, across the rebuilt table too
        queue.add(conn, ["/r/q"], at=1.0)
    with local.begin() as conn:  # a root's rows still go with it
        conn.execute(text("DELETE FROM roots WHERE id = :r"), {"r": root})
        assert images.find_by_path(conn, "/r/1.jpg") is None
    with other.connect() as conn:
        assert images.find_by_path(conn, "/r/1.jpg").id == new


# --- two hosts indexing their roots (the CLI, one data directory in turn) -------------------


def _as(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("IMGINDEX_HOST", host)


def _rows(data: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data / "imgindex.db") as conn:
        return sorted(conn.execute("SELECT host, path FROM images WHERE status = 'indexed'"))


def test_a_host_never_deletes_the_files_of_another_hosts_root_of_the_same_path(
    tmp_path, monkeypatch
):
    """Two NAS units with ``/srv/photos`` each: what b's folder lacks is not gone from a's, and
    a's root that b does not have is not b's to call unavailable."""
    photos, data, aside = tmp_path / "photos", tmp_path / "data", tmp_path / "aside"
    a_files = make_photos(photos, "red", 3)
    only_a = tmp_path / "only-on-a"
    make_photos(only_a, "green", 1)
    _as(monkeypatch, "a")
    cli(data, "init", photos, only_a, "--model", "thumbnail", "--k", "2")
    assert cli_json(data, "index")["embedded"] == 4
    shutil.move(photos, aside)  # b's disks: another /srv/photos, and no only-on-a
    shutil.rmtree(only_a)
    b_files = make_photos(photos, "blue", 2)
    _as(monkeypatch, "b")
    cli(data, "init", photos)
    report = cli_json(data, "index")
    assert (report["embedded"], report["removed"], report["frozen"]) == (2, 0, [])
    rows = _rows(data)
    assert [p for h, p in rows if h == "a"] == sorted(
        [str(f.resolve()) for f in a_files] + [str((only_a / "green_000.jpg").resolve())]
    )
    assert [p for h, p in rows if h == "b"] == sorted(str(f.resolve()) for f in b_files)
    status = cli_json(data, "status")
    assert status["indexed"] == 6 and status["host"] == "b"
    assert sorted((r["host"], r["available"]) for r in status["roots"]) == [
        ("a", None),
        ("a", None),
        ("b", True),
    ]
    assert "host 'a'" in cli(data, "status").stdout
    # the library is every host's: searches and listings name each file's host
    top = cli_json(data, "similar", aside / a_files[0].name, "-k", "6")
    assert {(m["host"], m["path"]) for m in top} == set(rows)
    exported = json.loads(cli(data, "export", "--json", "-").stdout)
    assert sorted((r["host"], r["path"]) for r in exported) == rows


def test_a_copy_of_another_hosts_file_is_a_new_row_never_a_move(tmp_path, monkeypatch):
    """b finds a file with the same content as a's, whose path is in a root of b's of the same
    path but not on b's disks: a's row stays a's (b reuses its vector), and a finds its file
    unchanged."""
    photos, data, aside = tmp_path / "photos", tmp_path / "data", tmp_path / "aside"
    (original,) = make_photos(photos, "red", 1)
    make_photos(photos, "blue", 1)  # a's root stays there, with another file
    elsewhere = tmp_path / "elsewhere"
    _as(monkeypatch, "a")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    aside.mkdir()
    shutil.move(original, aside / original.name)  # not on b's disks
    elsewhere.mkdir()
    shutil.copy2(aside / original.name, elsewhere / "copy.jpg")
    _as(monkeypatch, "b")
    cli(data, "init", photos, elsewhere)
    report = cli_json(data, "index")  # photos/blue_000.jpg: the same file as a's, a copy too
    assert (report["reused"], report["moved"], report["embedded"]) == (2, 0, 0)
    assert ("a", str(original.resolve())) in _rows(data)
    assert ("b", str((elsewhere / "copy.jpg").resolve())) in _rows(data)
    shutil.move(aside / original.name, original)
    _as(monkeypatch, "a")
    report = cli_json(data, "index")
    assert (report["unchanged"], report["embedded"], report["removed"]) == (2, 0, 0)


def test_a_daemon_leaves_another_hosts_queue_alone(tmp_path, monkeypatch):
    """b's daemon finds a path due in a's queue: it neither reads it nor drops it."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    (queued,) = make_photos(photos.resolve(), "red", 1)
    _as(monkeypatch, "a")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    with Library.open(data) as lib, lib.engine.begin() as conn:
        queue.add(conn, [str(queued)], at=time.time() - 60)
    _as(monkeypatch, "b")
    cli(data, "init", photos)
    daemon = Daemon(data)
    daemon.lib = Library.open(data, write=True, purpose="test")
    try:
        daemon._reload()
        assert daemon._process_due() is False
    finally:
        daemon.lib.close()
    assert _rows(data) == []
    _as(monkeypatch, "a")
    with Library.open(data) as lib, lib.engine.connect() as conn:
        assert [r.path for r in queue.entries(conn)] == [str(queued)]
