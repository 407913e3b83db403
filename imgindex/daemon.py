"""``imgindex daemon``: keep a library current with its roots, forever.

Start: open the library (migrations, FAISS loaded and caught up), start watching, tell systemd
READY=1, then reconcile with the disk. Loop: turn watcher events into rows of the SQLite
``queue`` (so a crash loses nothing), embed what is due in batches, refresh clusters and save
the index when the queue drains, rescan periodically or when events may have been missed.
Signal handlers only set flags; the loop acts on them. A full disk never stops it: the index
stays in memory, ``status`` says why it is not saved, and saving resumes when there is room.
Nor does a PostgreSQL server that goes away: the daemon says so once, waits for it with
backoff, then rescans (what was being written is redone; nothing is lost or doubled).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from imgindex import settings
from imgindex.db import changes, images, meta, queue
from imgindex.db.engine import is_disconnect, ping
from imgindex.db.roots import root_paths
from imgindex.embedclient import RETRY_S, ChosenEmbedder, Hooks, ServiceRefused, choose
from imgindex.errors import DatabaseUnavailable, ImgIndexError
from imgindex.fsafe import root_available, root_of
from imgindex.ingest import CHECKPOINT_S, Ingestor
from imgindex.library import Library
from imgindex.models import get_spec, load_embedder
from imgindex.names import shown
from imgindex.notify import Notifier
from imgindex.scan import is_ignored
from imgindex.service import QueryService
from imgindex.views import ViewKeeper
from imgindex.watch import EventSink, RawEvent, Watcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """How often the daemon does its own work, in seconds. These are not settings (those are
    in :mod:`imgindex.settings`): the defaults suit every library. Tests shorten them with the
    hidden option ``imgindex daemon --timing NAME=SECONDS`` (repeatable) so that they wait for
    a condition, not for a fixed time."""

    tick: float = 0.5  # longest sleep: how fast flags (SIGTERM) are noticed
    housekeeping: float = 5.0  # roots re-checked, heartbeat and STATUS= written this often
    drain: float = 2.0  # clusters refreshed and index saved at most this often
    move_grace: float = 1.0  # deletions wait this much longer than creations (moves come in halves)
    settled_age: float = 2.0  # a modified file with an older mtime is not being written
    checkpoint: float = CHECKPOINT_S  # the FAISS file is saved at least this often while busy
    rescan_jitter: float = 0.1  # rescans come every rescan_interval, +- this fraction
    embed_retry: float = RETRY_S  # an embedding service that is down is asked again this often
    db_retry: float = 1.0  # a lost database server is tried again after this, then doubling
    db_retry_max: float = 30.0  # ... up to this

    @classmethod
    def parse(cls, pairs: Sequence[str]) -> Timings:
        """Timings from ``NAME=SECONDS`` strings, the rest default; ImgIndexError says which
        one is wrong."""
        names = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for pair in pairs:
            name, _, raw = pair.partition("=")
            if name not in names:
                raise ImgIndexError(
                    f"--timing {pair!r}: expected NAME=SECONDS, NAME one of {', '.join(names)}"
                )
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            low_ok = value >= 0 if name == "rescan_jitter" else value > 0
            if not (math.isfinite(value) and low_ok and (name != "rescan_jitter" or value < 1)):
                raise ImgIndexError(
                    f"--timing {pair!r}: expected a positive number of seconds "
                    "(rescan_jitter: a fraction from 0 to 1)"
                )
            values[name] = value
        return cls(**values)


class Daemon:
    """One running daemon over one library."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str | None = None,
        workers: int | None = None,
        weights: Path | None = None,
        notifier: Notifier | None = None,
        timings: Timings | None = None,
        **overrides: Any,
    ) -> None:
        self.data_dir = data_dir
        self.database = database  # a PostgreSQL library's URL (None: the data dir's)
        self.timings = timings or Timings()
        self.workers = workers
        self.weights = weights
        self.overrides = overrides
        self.notifier = notifier or Notifier()
        self.stop_requested = False
        self.reload_requested = False
        self.sink = EventSink()
        self.state = "starting"
        self._beat = time.monotonic()
        self._next_rescan = 0.0
        self._last_house = 0.0
        self._last_drain = 0.0
        self._dirty = False
        #: the changes log's head at this host's last cluster refresh
        self._maintained_head: tuple[int, int] | None = None
        self._cut_short = False  # the ingestor stopped a pass early (SIGTERM)
        self._config_version = 0
        self.embedder: ChosenEmbedder | None = None  # the one model, loaded after READY
        self.service: QueryService | None = None
        self.web: Any = None  # the web page (imgindex.web.server.WebServer), with `http`
        self.view = ViewKeeper()  # the cluster view in settings.view_dir, when set

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="watchdog")
        self._install_signals()
        self.lib = Library.open(
            self.data_dir, write=True, purpose="imgindex daemon", database=self.database
        )
        self.lib.cache.tolerate_full_disk = True
        try:
            self._reload()
            self.lib.cache.load()  # loaded and consistent before READY
            self.watcher = Watcher(self.sink, self.settings.poll or None)
            self._sync_roots()
            self._set_state("scanning")  # published: `status` shows it (and a full disk)
            threading.Thread(target=self._keepalive, name="watchdog-ping", daemon=True).start()
            self.notifier.ready(self._status_line())
            log.info("ready: %s", self._status_line())
            self._load_model()
            self._publish()  # which embedder is in use
            self._start_service()
            self._start_web()
            self._survive(self.rescan)
            while not self.stop_requested:
                self._survive(self.tick)
            self.state = "stopping"
            self.notifier.stopping()
            self._unless_lost(self._publish)
            self._unless_lost(self.lib.cache.save)  # else the next open catches the file up
            self.watcher.stop()
        finally:
            if self.web:
                self.web.stop()
            if self.service:
                self.service.stop()
            self._unless_lost(lambda: self._publish(final=True))
            self.lib.close()
        log.info("stopped")
        return 0

    def _load_model(self) -> None:
        """Load the library's model once, or connect to the embedding service of
        ``embed_url``; the ingest loop (a new Ingestor) and the query service share it.

        After READY (a download may take minutes). On failure no query service is offered and
        the ingest loop tries again with each batch, as ``imgindex index`` does (the files
        fail with the reason)."""
        try:
            embedder = self._choose_embedder()
            if embedder.remote is None:
                embedder.local()  # loaded now (torch is imported only when it is used)
            else:
                embedder.check()
        except ServiceRefused as exc:  # another model, a wrong token: waits for a fix
            log.error("%s", exc)
        except Exception as exc:  # never take the daemon down
            log.warning("similar-photo queries are not served by the daemon: %s", exc)
            return
        self.embedder = embedder
        self.ingestor = self._new_ingestor()

    def _choose_embedder(self) -> ChosenEmbedder:
        """The embedder the settings ask for (``embed_url``, ``embed_fallback``)."""
        return choose(
            get_spec(self.lib.model),
            lambda: load_embedder(
                self.lib.model, weights=self.weights, cache_dir=self.lib.paths.weights
            ),
            url=self.settings.embed_url,
            token_file=self.settings.embed_token_file,
            fallback=self.settings.embed_fallback,
            retry_s=self.timings.embed_retry,
            hooks=Hooks(
                interrupt=self._stop_waiting, heartbeat=self._heartbeat, on_change=self._changed
            ),
        )

    def _stop_waiting(self) -> bool:
        """Whether to stop waiting for the embedding service: stopping, or the settings
        changed (the fallback may be ``local`` now)."""
        if not self.reload_requested:
            try:
                with self.lib.engine.connect() as conn:
                    self.reload_requested = meta.config_version(conn) != self._config_version
            except Exception as exc:  # the database is lost: the loop meets that itself
                log.debug("cannot read the settings' version: %s", exc)
                return True
        return self.stop_requested or self.reload_requested

    def _changed(self) -> None:
        """The embedder in use changed: `status` says so now (from the loop's thread; the
        query thread's changes are published by the next housekeeping round)."""
        if threading.current_thread() is threading.main_thread():
            try:
                self._publish()
            except Exception as exc:  # never fail the batch in hand over a status line
                log.debug("cannot publish the status: %s", exc)

    def _start_service(self) -> None:
        """Answer `imgindex similar` for photos outside the library (optional: on failure the
        CLI embeds them itself)."""
        if self.embedder is None:
            return  # the model did not load (logged)
        service = QueryService(self.data_dir, self.embedder)
        try:
            service.start()
        except Exception as exc:
            log.warning("similar-photo queries are not served by the daemon: %s", exc)
            return
        self.service = service

    def _start_web(self) -> None:
        """Serve the web page on the ``http`` setting's address (optional: on failure the
        daemon goes on without it, and says why)."""
        if not self.settings.http:
            return
        try:
            from imgindex.web.server import WebServer

            web = WebServer(
                self.data_dir, self.settings.http, database=self.database, embedder=self.embedder
            )
            web.start()
        except Exception as exc:
            log.error("the web page is not served: %s", exc)
            return
        self.web = web
        log.info("serving the %s", web.describe())

    def _install_signals(self) -> None:
        def stop(_signo: int, _frame: Any) -> None:
            self.stop_requested = True

        def reload(_signo: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _reload(self) -> None:
        self.settings = settings.load(self.lib.engine, **self.overrides)
        if self.embedder is not None:  # embed_url, embed_fallback may have changed
            try:
                fresh = self._choose_embedder()
                self.embedder.use(fresh.remote, fresh.fallback)
            except ImgIndexError as exc:  # a token file that cannot be read
                log.error("the embedding settings cannot be used: %s", exc)
        with self.lib.engine.connect() as conn:
            self._config_version = meta.config_version(conn)
            self.roots = root_paths(conn)
        self.ingestor = self._new_ingestor()
        self._schedule_rescan()
        self.view.verify = True  # view_dir may be new: check it entry by entry

    def _new_ingestor(self) -> Ingestor:
        """An Ingestor with the current settings and the daemon's model (None before it is
        loaded, or when it cannot be: the Ingestor then loads it itself when it needs it)."""
        return Ingestor(
            self.lib,
            batch_size=self.settings.batch_size,
            workers=self.workers,
            weights=self.weights,
            embedder=self.embedder,
            progress=lambda _n: self._heartbeat(),
            should_stop=self._stopping,
            deferred=self._deferred,
            checkpoint_s=self.timings.checkpoint,
        )

    # --- the loop -------------------------------------------------------------------------

    def tick(self) -> None:
        """One turn of the loop: flags, events, due work, housekeeping, then sleep."""
        self._heartbeat()
        if self.reload_requested:
            self.notifier.reloading()
            self._reload()
            self.reload_requested = False  # not before: a lost database has it done again
            self._sync_roots()
            self._update_view()
            self.notifier.ready(self._status_line())
            log.info("configuration reloaded")
        self._absorb(self.sink.drain())
        now = time.monotonic()
        if self.watcher.missed_events or not self.watcher.healthy() or now >= self._next_rescan:
            why = "events were lost" if self.watcher.missed_events else "it is time"
            log.info("rescanning the roots: %s", why)
            self.watcher.missed_events = False
            self.rescan()
        if self._process_due():
            return  # more may be due right away
        if (
            self._dirty
            and time.monotonic() - self._last_drain >= self.timings.drain
            and self._queued() == 0
        ):
            self._drain()
        if time.monotonic() - self._last_house >= self.timings.housekeeping:
            self._housekeeping()
        self.sink.wake.wait(self._sleep_for())
        self.sink.wake.clear()

    # --- a database server that goes away ---------------------------------------------------

    def _survive(self, step: Callable[[], None]) -> None:
        """Run one step of the loop; when the database server is lost during it, wait for the
        server to come back instead of dying (anything else still ends the daemon)."""
        try:
            step()
        except Exception as exc:
            if not is_disconnect(exc):
                raise
            self._wait_for_database(exc)

    def _wait_for_database(self, exc: BaseException) -> None:
        """Say once that the server is gone, try it again with exponential backoff (``db_retry``
        doubling up to ``db_retry_max``), and once it answers, rescan: the step that failed
        rolled back (its queue rows are still there) and the watcher's events meanwhile were
        dropped, so the rescan finds whatever changed. Returns early on SIGTERM."""
        lost_at = time.monotonic()
        delay = self.timings.db_retry
        log.warning("database unreachable: %s; retrying in %gs", _first_line(exc), delay)
        self.state = "waiting for the database"  # not published: the database is where it goes
        self.notifier.status(f"waiting for the database: {_first_line(exc)}")
        while not self._pause(delay):
            try:
                ping(self.lib.engine)
            except Exception as again:
                if not is_disconnect(again):
                    raise
                delay = min(2 * delay, self.timings.db_retry_max)
                log.debug("database still unreachable; retrying in %gs", delay)
                continue
            log.info(
                "database reachable again after %.1f s: rescanning", time.monotonic() - lost_at
            )
            self.watcher.missed_events = True  # the next tick rescans
            return

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` while waiting for the database, alive (heartbeats, so the systemd
        watchdog sees a waiting daemon, not a hung one) and dropping the watcher's events (the
        rescan that follows finds their changes); True when SIGTERM came."""
        until = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < until:
            self._heartbeat()
            self.sink.drain()
            self.sink.wake.wait(min(self.timings.tick, max(0.0, until - time.monotonic())))
            self.sink.wake.clear()
        return self.stop_requested

    def _unless_lost(self, step: Callable[[], None]) -> None:
        """Run a step of stopping; a lost database server only skips it (logged)."""
        try:
            step()
        except Exception as exc:
            if not is_disconnect(exc):
                raise
            log.warning("stopping without the database: %s", _first_line(exc))

    def rescan(self) -> None:
        """Full reconciliation of every root with the disk."""
        self._set_state("scanning")
        self._cut_short = False
        report = self.ingestor.run()
        self._dirty = False
        self._last_drain = time.monotonic()
        self._schedule_rescan()
        if self.ingestor.postponed:  # the embedding service is awaited: the rest soon
            self._next_rescan = time.monotonic()
        self._update_view()
        log.info(
            "scan %s: %d embedded, %d moved, %d removed, %d failed, %d unchanged",
            "interrupted" if self._cut_short else "done",
            report.embedded,
            report.moved,
            report.removed,
            report.failed,
            report.unchanged,
        )
        self._set_state("watching")

    def _schedule_rescan(self) -> None:
        jitter = random.uniform(-1, 1) * self.timings.rescan_jitter
        self._next_rescan = time.monotonic() + self.settings.rescan_interval * (1 + jitter)

    def _stopping(self) -> bool:
        """The ingestor's question: stop now? A yes means the pass ends early (remembered)."""
        self._cut_short = self._cut_short or self.stop_requested
        return self.stop_requested

    def _absorb(self, events: list[RawEvent]) -> None:
        """Watcher events become queue rows; renames are followed in the database at once."""
        if not events:
            return
        now = time.time()
        due: dict[str, float] = {}
        forget: list[str] = []
        for ev in events:
            if ev.kind == "moved":
                if self._ignored(ev.dest):
                    due[ev.path] = now + self.settings.debounce  # renamed away: gone
                    continue
                if not self._ignored(ev.path):
                    self.ingestor.move(ev.path, ev.dest)
                    self._dirty = True
                    forget.append(ev.path)
                due[ev.dest] = now + self.settings.debounce
            elif self._ignored(ev.path):
                continue
            elif ev.kind in ("created", "modified") and not ev.is_dir:
                due[ev.path] = now + self._quiet_for(ev.kind, ev.path, now)
            elif ev.kind == "deleted":  # a little later, so a move's other half arrives first
                due[ev.path] = now + self.settings.debounce + self.timings.move_grace
            else:  # closed after writing, a chmod, a folder created: after a short quiet
                due[ev.path] = now + self.settings.debounce
        with self.lib.engine.begin() as conn:
            queue.remove(conn, forget)
            queue.schedule(conn, due, now)

    def _quiet_for(self, kind: str, path: str, now: float) -> float:
        """How long to wait before reading a file that was created or written to.

        A writer's IN_CREATE is followed by IN_MODIFY events and IN_CLOSE_WRITE; a file moved
        or linked in (watchdog reports a moved-in folder's files as created) sees none. So a
        creation waits only the short quiet period, a write waits for the close (up to
        ``write_timeout``), and the close brings it back to the short quiet period."""
        root = self._root(path)
        mode = self.watcher.modes.get(root, "") if root is not None else ""
        if kind == "created" or mode.startswith("polling"):
            return self.settings.debounce  # no close events when polling
        try:
            age = now - os.stat(path).st_mtime
        except OSError:
            return self.settings.debounce  # gone already
        if age > self.timings.settled_age:  # an old mtime: metadata changed, not being written
            return self.settings.debounce
        return self.settings.write_timeout  # being written: wait for the close

    def _deferred(self) -> set[str]:
        """Files with a queue entry not yet due (a scan leaves them to their events)."""
        with self.lib.engine.connect() as conn:
            return queue.not_yet_due(conn, time.time())

    def _hold_back_deletions(self, rows: list[Any], now: float) -> list[Any]:
        """Paths that vanished wait while other paths are still settling (up to
        ``write_timeout``): when those are the other half of a move, reading them first lets
        the content hash carry the rows over instead of deleting and re-embedding them."""
        gone = [
            r
            for r in rows
            if not os.path.lexists(r.path) and now - r.enqueued_at < self.settings.write_timeout
        ]
        if not gone:
            return rows
        with self.lib.engine.connect() as conn:
            later = queue.later(conn, now, limit=1000)
        # only paths that exist can be the other half of a move (other deletions cannot)
        settling = next((r.due_at for r in later if os.path.lexists(r.path)), None)
        if settling is None:
            return rows
        with self.lib.engine.begin() as conn:
            queue.postpone(conn, [r.path for r in gone], settling + 0.05)
        held = {r.path for r in gone}
        return [r for r in rows if r.path not in held]

    def _process_due(self) -> bool:
        """Embed one batch of due paths; True when a full batch was taken."""
        limit = self.settings.batch_size
        now = time.time()
        with self.lib.engine.connect() as conn:
            rows = queue.due(conn, now, limit)
        rows = self._hold_back_deletions(rows, now)
        if not rows:
            return False
        oldest = rows[0].due_at
        if (
            len(rows) < limit
            and now - oldest < self.settings.batch_seconds
            and self._queued() > len(rows)
        ):
            return False  # more are coming: wait up to batch_seconds to fill the batch
        self._set_state("indexing")
        self._refresh([r.path for r in rows])
        if self.ingestor.postponed:  # the embedding service is awaited: the rows stay queued
            self._set_state("watching")
            return False
        with self.lib.engine.begin() as conn:
            queue.done(conn, rows)
        self._dirty = True
        self._set_state("watching")
        return len(rows) == limit

    def _refresh(self, paths: list[str]) -> None:
        """Bring these paths up to date; a path that makes this fail even alone is logged and
        left to the next rescan instead of stopping the daemon (and again at every restart)."""
        try:
            self.ingestor.refresh_paths(paths)
            return
        except ImgIndexError:
            raise
        except Exception as exc:
            if len(paths) == 1:
                log.error("cannot process %s: %r; left to the next rescan", shown(paths[0]), exc)
                return
            log.warning("a batch of %d paths failed (%r); one by one", len(paths), exc)
        for path in paths:
            self._refresh([path])

    def _drain(self) -> None:
        self._set_state("clustering")
        seen = self._log_head()  # before: what commits during the drain is refreshed next time
        self.ingestor.drain(final=False)
        self._update_view()
        self._maintained_head = seen
        self._dirty = False
        self._last_drain = time.monotonic()
        r = self.ingestor.report
        log.info(
            "up to date: %d embedded, %d moved, %d removed, %d failed so far",
            r.embedded,
            r.moved,
            r.removed,
            r.failed,
        )
        self._set_state("watching")

    def _housekeeping(self) -> None:
        self._last_house = time.monotonic()
        with self.lib.engine.connect() as conn:
            version = meta.config_version(conn)
        if version != self._config_version:
            self.reload_requested = True
        self._sync_roots()
        self._retry_pending()
        self._maintain_shared()
        if self.settings.view_dir and self.view.titles_changed(self.lib):
            self._update_view()  # a cluster was named (or an update failed): folders follow
        if self.lib.cache.disk_full:
            self.lib.cache.save()  # once the room it lacked is free
        self.ingestor.checkpoint()  # an idle daemon's file catches up within a minute
        self._publish()
        self.notifier.status(self._status_line())

    def _maintain_shared(self) -> None:
        """On a database that several hosts write: take the cluster maintenance when nobody
        holds it (a host that held it stopped), and while holding it refresh the clusters
        when another host changed the library."""
        assert self.lib.maintenance is not None
        if not self.lib.maintenance.shared:
            return
        held_before = self.lib.maintains
        if self.lib.maintenance.try_take() and (
            not held_before or self._log_head() != self._maintained_head
        ):
            self._dirty = True  # the next quiet moment drains: clusters, labels, views

    def _log_head(self) -> tuple[int, int]:
        with self.lib.engine.connect() as conn:
            return changes.log_state(conn)

    def _sync_roots(self) -> None:
        available = {root: root_available(root) for root in self.roots}
        for root in self.watcher.sync(self.roots, available):
            if self.state != "starting":
                log.info("root %s is available: scanning it", root)
                self._enqueue([str(root)], time.time())

    def _retry_pending(self) -> None:
        with self.lib.engine.connect() as conn:
            paths = images.due_for_retry(conn, time.time(), limit=1000)
        if paths:
            self._enqueue(paths, time.time())

    def _enqueue(self, paths: list[str], at: float) -> None:
        with self.lib.engine.begin() as conn:
            queue.add(conn, paths, at)

    def _update_view(self) -> None:
        """Bring the cluster view up to date (cheap when nothing changed; never raises)."""
        self.view.update(self.lib, self.settings.view_dir, self.settings.view_mode, self._heartbeat)

    # --- helpers --------------------------------------------------------------------------

    def _ignored(self, path: str) -> bool:
        root = self._root(path)
        if root is None:
            return True
        rel = Path(path).relative_to(root).parts if path != str(root) else ()
        return any(is_ignored(part) or self.settings.ignores(part) for part in rel)

    def _root(self, path: str) -> Path | None:
        return root_of(path, self.roots)

    def _queued(self) -> int:
        with self.lib.engine.connect() as conn:
            return queue.count(conn)

    def _sleep_for(self) -> float:
        with self.lib.engine.connect() as conn:
            nxt = queue.next_due(conn)
        tick = self.timings.tick
        wait = tick if nxt is None else max(0.01, min(tick, nxt - time.time()))
        if self._dirty:
            wait = min(wait, max(0.01, self.timings.drain - (time.monotonic() - self._last_drain)))
        return wait

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()

    def _keepalive(self) -> None:
        """WATCHDOG=1 while the loop is alive (a hung loop stops the pings)."""
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        stale_after = max(60.0, 4 * interval)
        while not self.stop_requested:
            if time.monotonic() - self._beat < stale_after:
                self.notifier.watchdog()
            time.sleep(interval)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._publish()

    def _counts(self) -> dict[str, int]:
        with self.lib.engine.connect() as conn:
            counts = images.count_by_status(conn)
        return {
            "indexed": counts.get("indexed", 0),
            "failed": counts.get("failed", 0),
            "pending": counts.get("pending", 0),
            "queued": self._queued(),
        }

    def _status_line(self) -> str:
        c = self._counts()
        line = (
            f"{self.state}: {c['indexed']} indexed, {c['queued'] + c['pending']} pending, "
            f"{c['failed']} failed"
        )
        return line + ("; vector index not saved: disk full" if self.lib.cache.disk_full else "")

    def _publish(self, final: bool = False) -> None:
        """What `imgindex status` shows about the daemon."""
        info = {
            "pid": os.getpid(),
            "state": "stopped" if final else self.state,
            "heartbeat": time.time(),
            "problem": str(self.lib.cache.disk_full) if self.lib.cache.disk_full else None,
            "embedder": self.embedder.describe() if self.embedder else {"using": "local"},
            "roots": {
                str(r): m
                for r, m in (getattr(self, "watcher", None) and self.watcher.modes.items()) or []
            },
        }
        with self.lib.engine.begin() as conn:
            meta.publish_daemon_status(conn, info)


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (a log line per event); a lost server's names it."""
    if isinstance(exc, DatabaseUnavailable):
        return f"{exc.server}: {exc.reason}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
