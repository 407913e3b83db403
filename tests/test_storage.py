"""The storage layer (``imgindex.db``): the only place that speaks SQL, and what it is asked."""

from __future__ import annotations

import ast
import sqlite3
import time
from pathlib import Path

from helpers import cli
from imaging import make_photos
from sqlalchemy import event

from imgindex.daemon import Daemon
from imgindex.db import schema
from imgindex.library import Library

PACKAGE = Path(__file__).resolve().parents[1] / "imgindex"
TABLES = set(schema.metadata.tables)


def _sql_outside_db(path: Path) -> list[str]:
    """What in one module would be SQL: an import of SQLAlchemy, of a table, or ``text()``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "sqlalchemy"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "sqlalchemy":
                found.append(f"from {node.module}")
            elif node.module == "imgindex.db.schema":
                found += [f"table {a.name}" for a in node.names if a.name in TABLES]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "text":
            found.append("text()")
    return found


def test_only_the_storage_layer_speaks_sql():
    offenders = {
        str(p.relative_to(PACKAGE)): what
        for p in sorted(PACKAGE.rglob("*.py"))
        if "db" not in p.relative_to(PACKAGE).parts[:1] and (what := _sql_outside_db(p))
    }
    assert offenders == {}


def test_a_rescan_asks_the_queue_once_and_leaves_queued_files_to_their_events(tmp_path):
    """Files with a queue entry not yet due are left to their events: the daemon's rescan
    asks the queue for them once, not once per file."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    files = make_photos(photos.resolve(), "green", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    waiting = str(files[3])
    with sqlite3.connect(data / "imgindex.db") as conn:
        now = time.time()
        conn.execute(
            "INSERT INTO queue (host, path, due_at, enqueued_at) VALUES ('', ?, ?, ?)",
            (waiting, now + 3600, now),
        )
    daemon = Daemon(data)
    daemon.lib = Library.open(data, write=True, purpose="test")
    statements: list[str] = []
    event.listen(daemon.lib.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        daemon._reload()
        daemon.rescan()
    finally:
        daemon.lib.close()
    assert sum("FROM queue" in s for s in statements) == 1
    with sqlite3.connect(data / "imgindex.db") as conn:
        indexed = {r[0] for r in conn.execute("SELECT path FROM images WHERE status='indexed'")}
    assert indexed == {str(f) for f in files} - {waiting}
