"""The storage layer: what it is asked."""

from __future__ import annotations

import sqlite3
import time

from helpers import cli
from imaging import make_photos
from sqlalchemy import event

from imgindex.daemon import Daemon
from imgindex.library import Library


def test_a_rescan_asks_the_queue_once_and_leaves_queued_files_to_their_events(tmp_path):
    """Files with a queue entry not yet due are left to their events: the daemon's rescan
    asks the queue for them once, not once per file."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    files = make_photos(photos.resolve(), "green", 12)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    waiting = str(files[3])
    with sqlite3.connect(data / "imgindex.db") as conn:
        now = time.time()
        conn.execute("INSERT INTO queue VALUES (?, ?, ?)", (waiting, now + 3600, now))
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
