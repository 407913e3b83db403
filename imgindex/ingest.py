"""The ingestion core shared by ``imgindex index`` and the daemon.

Files flow through a pool of decode workers (read, check the file is stable, hash, and either
find the same content already indexed or decode it at the model's input size) into batches that
the model embeds while the workers decode the next ones. Each batch is written to SQLite in one
transaction together with its cluster update (SQLite triggers log the vector changes); the
in-memory FAISS index replays that log after the commit and is saved at checkpoints and at the
end, so a crash at any moment only leaves a FAISS file that the next open catches up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgindex import names, organize
from imgindex.db import Connection, images, meta
from imgindex.db.engine import WorkerConnection, is_disconnect, unavailable, worker_connection
from imgindex.db.roots import list_roots
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, STATUS_PENDING
from imgindex.decode import DEFAULT_MAX_PIXELS, decode_for_model
from imgindex.errors import DatabaseUnavailable, DecodeFailure, NotInLibrary
from imgindex.fsafe import is_under, root_available, root_of
from imgindex.library import Library
from imgindex.models import Embedder, EmbeddingPostponed, get_spec
from imgindex.scan import FileStat, Unseen, is_candidate, vanished, walk

log = logging.getLogger(__name__)

RETRY_WINDOW_S = 600.0  # a truncated file modified this recently may still be being written
RETRY_DELAY_S = 30.0
CHECKPOINT_S = 60.0  # save the FAISS index at least this often during long runs


@dataclass
class Report:
    """What one pass did."""

    seen: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0  # same content already indexed elsewhere: vector copied, nothing embedded
    moved: int = 0  # same content whose old path vanished: row follows the file
    failed: int = 0
    pending: int = 0  # to be retried later (still being written)
    removed: int = 0
    #: roots, mount points and folders left as they are because they are unavailable
    frozen: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: a Ray pass only: nodes, actors, device, and the seconds of each stage
    ray: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """A file after the decode worker: ``kind`` is known, decoded, failed, changed, vanished,
    or unreachable (a Ray node could not find a file this host sees: retried later)."""

    root_id: int
    fs: FileStat
    kind: str
    content_hash: str | None = None
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    reason: str | None = None
    retryable: bool = False
    source: int | None = None  # id of a row with the same content, for ``known``
    phash: int | None = None  # perceptual hash of the decoded picture
    label: int | None = None  # ImageNet top-1 class, once embedded (models with a head)
    vector: np.ndarray | None = None  # once embedded


class Ingestor:
    """Embeds, stores and clusters files for one writable library."""

    def __init__(
        self,
        lib: Library,
        *,
        batch_size: int = 16,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        weights: Path | None = None,
        embedder: Embedder | None = None,
        progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        deferred: Callable[[], Collection[str]] | None = None,
        checkpoint_s: float = CHECKPOINT_S,
    ) -> None:
        if not lib.writable:
            raise ValueError("the library must be opened for writing")
        self.lib = lib
        self.batch_size = batch_size
        self.workers = workers or max(2, min(8, os.cpu_count() or 2))
        self.max_pixels = max_pixels
        self.weights = weights
        self.progress = progress
        self.should_stop = should_stop
        #: files a scan leaves alone for now (the daemon's pending events), asked once a scan
        self.deferred = deferred
        self.input_size = get_spec(lib.model).input_size
        self._embedder = embedder
        self.checkpoint_s = checkpoint_s
        self._saved_at = time.monotonic()
        self.report = Report()
        #: the embedder postponed a batch (it waits for a remote service): the pass stopped
        #: there, nothing of that batch committed; the caller tries again later
        self.postponed = False
        self._dropped: dict[str, Any] = {}  # content hash -> row dropped in this batch
        self._local = threading.local()
        self._connections: list[WorkerConnection] = []

    # --- full passes --------------------------------------------------------------------------

    def run(
        self, folders: list[Path] | None = None, on_start: Callable[[int], None] | None = None
    ) -> Report:
        """One pass over the roots (or some folders under them): new and changed files are
        embedded, vanished ones removed, then clusters and the index are brought up to date.
        ``on_start`` is told how many files need work once the folders are walked."""
        start = time.monotonic()
        self.postponed = False
        self.lib.cache.load()  # the FAISS index loaded and caught up before changing it
        plans = [self._scan(root_id, folder) for root_id, folder in self._targets(folders)]
        if on_start:
            on_start(sum(len(todo) for todo, _ in plans))
        for todo, missing in plans:
            self.ingest(todo)
            if self.should_stop() or self.postponed:
                break
            self.remove_missing(missing)
        self.drain()
        self.report.seconds = time.monotonic() - start
        return self.report

    def _targets(self, folders: list[Path] | None) -> list[tuple[int, Path]]:
        with self.lib.engine.connect() as conn:
            roots = list_roots(conn)
        if not folders:
            return roots
        out = []
        for folder in folders:
            owner = _owner(folder, roots)
            if owner is None:
                raise NotInLibrary(
                    f"{folder} is not under any root of the library; add it with "
                    f"`imgindex init {folder}`"
                )
            out.append((owner[0], folder))
        return out

    def _scan(self, root_id: int, folder: Path) -> tuple[list[tuple[int, FileStat]], list[str]]:
        """``(files needing work, paths no longer on disk)`` for one folder. Files under a
        folder that cannot be read, or under a mount point that is gone, are not missing."""
        with self.lib.engine.connect() as conn:
            known = {
                p: r for p, r in images.rows_under(conn, root_id).items() if is_under(p, folder)
            }
        unseen = Unseen()
        try:
            on_disk = list(walk(folder, unseen))
        except OSError as exc:
            return self._freeze(folder, exc.strerror or str(exc))
        gone_mounts = self._missing_mounts(folder, unseen.mounts)
        on_gone_mount = any(is_under(str(folder), m) for m in gone_mounts)  # warned already
        if (
            not on_disk
            and not on_gone_mount
            and any(r[3] == STATUS_INDEXED for r in known.values())
        ):
            return self._freeze(folder, "it is empty (an unmounted disk?)")
        self._frozen(unseen.unreadable)
        kept = unseen.unreadable + gone_mounts
        seen = {fs.path for fs in on_disk}
        if self.deferred:  # left to their own events; still on disk, so not missing either
            later = self.deferred()
            on_disk = [fs for fs in on_disk if fs.path not in later]
        todo = []
        for fs in on_disk:
            row = known.get(fs.path)
            if row and is_current(row[1:], fs):
                self.report.unchanged += 1
            else:
                todo.append((root_id, fs))
        self.report.seen += len(on_disk)
        missing = [p for p in known if p not in seen and not any(is_under(p, k) for k in kept)]
        return todo, missing

    def _freeze(self, folder: Path, why: str) -> tuple[list, list]:
        log.warning("%s is unavailable (%s): left as it is, nothing removed", folder, why)
        self._frozen([str(folder)])
        return [], []

    def _frozen(self, paths: list[str]) -> None:
        """Report ``paths`` as left untouched (once each: the daemon's report lives long)."""
        self.report.frozen += [p for p in dict.fromkeys(paths) if p not in self.report.frozen]

    def _missing_mounts(self, folder: Path, found: list[str]) -> list[str]:
        """Mount points at, under or above ``folder`` whose disk is gone (no longer mounted, or
        empty) while rows live under them. The mount points a walk finds are remembered, and
        forgotten once they are gone with no rows left under them."""
        with self.lib.engine.begin() as conn:
            remembered = set(meta.mount_points(conn))
            mounts = remembered | set(found)
            where = str(folder)
            here = [m for m in sorted(mounts) if is_under(m, where) or is_under(where, m)]
            gone = [m for m in here if not mount_available(m)]
            for m in gone:
                if not images.paths_at_or_under(conn, m, limit=1):
                    mounts.discard(m)
            if mounts != remembered:
                meta.set_mount_points(conn, mounts)
        gone = [m for m in gone if m in mounts]
        for m in gone:
            log.warning(
                "mount point %s is missing (not mounted, or empty): its files are left as they "
                "are, nothing removed",
                m,
            )
        self._frozen(gone)
        return gone

    def _gone_mounts(self) -> list[str]:
        """Remembered mount points whose disk is gone (not mounted, or empty)."""
        with self.lib.engine.connect() as conn:
            mounts = meta.mount_points(conn)
        return [m for m in mounts if not mount_available(m)]

    # --- the pipeline ---------------------------------------------------------------------------

    def ingest(self, files: Iterable[tuple[int, FileStat]]) -> None:
        """Embed and store ``(root_id, file)`` pairs; decoding overlaps with the model."""
        pending: list[Prepared] = []
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
                results = _ordered_map(pool, self._prepare, files, self.workers * 4)
                for prepared in results:
                    pending.append(prepared)
                    decoded = sum(p.kind == "decoded" for p in pending)
                    if decoded >= self.batch_size or len(pending) >= 8 * self.batch_size:
                        self._flush(pending)
                        pending = []
                        if self.should_stop() or self.postponed:  # found again by the next pass
                            results.close()
                            return
                self._flush(pending)
        finally:
            for conn in self._connections:  # the worker threads are gone
                conn.close()
            self._connections.clear()
            self._local = threading.local()

    def _prepare(self, item: tuple[int, FileStat]) -> Prepared:
        """Runs in a worker thread: read, verify stable, hash, look up, decode. Whatever goes
        wrong is this file's failure, with the reason; but a database server that went away
        is nobody's: it ends the pass (DatabaseUnavailable)."""
        root_id, fs = item
        try:
            return prepare_file(
                root_id, fs, self._known, size=self.input_size, max_pixels=self.max_pixels
            )
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            log.warning("cannot prepare %s: %r", names.shown(fs.path), exc)
            return Prepared(root_id, fs, "failed", reason=f"unexpected error: {exc!r}")

    def _known(self, digest: str) -> int | None:
        """Id of an indexed row with this content (worker threads: a plain DB-API connection
        each, so the lookup holds the GIL for microseconds, not SQLAlchemy's milliseconds).

        A connection the server dropped (it restarted) is replaced once; when the new one
        fails too, the server is gone: DatabaseUnavailable."""
        for attempt in (1, 2):
            try:
                return images.indexed_id_with_hash(self._worker_conn(), digest, self.lib.model)
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                self._drop_worker_conn()
                if attempt == 2:
                    raise unavailable(str(self.lib.location.target), exc) from exc
        raise AssertionError("unreachable")

    def _worker_conn(self) -> WorkerConnection:
        """This worker thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = worker_connection(self.lib.location.target)
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _drop_worker_conn(self) -> None:
        """Close this worker thread's connection (broken): the next lookup opens another."""
        conn = self._local.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()

    def _embed(self, batch: list[Prepared]) -> None:
        embed_prepared(self.embedder(), batch)

    def embedder(self) -> Embedder:
        """The model (or service) this pass embeds with, loaded on first use."""
        if self._embedder is None:
            from imgindex.models import load_embedder

            self._embedder = load_embedder(
                self.lib.model, weights=self.weights, cache_dir=self.lib.paths.weights
            )
        return self._embedder

    def _flush(self, batch: list[Prepared]) -> None:
        if not batch:
            return
        if self.postponed:
            return
        try:
            self._embed([p for p in batch if p.kind == "decoded"])
        except EmbeddingPostponed as exc:
            log.info("%d files left for later: %s", len(batch), exc)
            self.postponed = True
            return
        self.store(batch)

    def store(self, batch: list[Prepared]) -> None:
        """Commit files already prepared and embedded (by this pass, or by Ray workers), bring
        the FAISS index along, and report progress."""
        self.lib.cache.load()  # caught up *before* this batch commits
        self._commit_isolated(batch)
        self.lib.cache.catch_up()
        if self.progress:
            self.progress(len(batch))
        self.checkpoint()

    def _commit_isolated(self, batch: list[Prepared]) -> None:
        """Commit the batch in one transaction; when that fails, commit each file alone, and
        record a file that cannot be written even alone as failed: one file never fails the
        others."""
        before = replace(self.report, frozen=list(self.report.frozen))
        try:
            self._commit(batch)
            return
        except Exception as exc:
            self.report = before  # the counts of the rolled-back transaction
            if is_disconnect(exc):  # no file's fault: the pass ends, the next one redoes it
                raise
            if len(batch) == 1:
                self._commit_failure(batch[0], exc)
                return
            log.warning("a batch of %d files failed (%s); writing them one by one", len(batch), exc)
        for p in batch:
            self._commit_isolated([p])

    def _commit(self, batch: list[Prepared]) -> None:
        embedded = sum(p.kind == "decoded" for p in batch)
        added: list[tuple[int, np.ndarray]] = []
        removed: list[int] = []
        self._dropped = {}
        with self.lib.engine.begin() as conn:
            for p in batch:
                self._apply(conn, p, p.vector, added, removed)
            gone = set(removed)  # a row added and replaced within this batch is not added
            added = [(i, v) for i, v in added if i not in gone]
            if added:
                new_ids = np.array([i for i, _ in added], dtype=np.int64)
                new_vecs = np.stack([v for _, v in added])
                if self.lib.maintains:
                    n = self.lib.cache.index.size + len(added) - len(gone)
                    organize.after_batch(
                        conn, self.lib.k_setting, self.lib.dim, new_ids, new_vecs, n
                    )
                else:
                    organize.assign_batch(conn, new_ids, new_vecs)
            meta.add_embedded(conn, embedded)
        self.report.embedded += embedded

    def _commit_failure(self, p: Prepared, exc: BaseException) -> None:
        """Record ``p`` as failed with ``exc`` as its reason (its own transaction)."""
        log.warning("cannot store %s: %s", names.shown(p.fs.path), exc)
        failed = Prepared(p.root_id, p.fs, "failed", p.content_hash, reason=f"cannot store: {exc}")
        try:
            self._commit([failed])
        except Exception as again:  # not even as failed: it is found again by the next pass
            if is_disconnect(again):
                raise
            log.error("cannot record %s as failed: %s", names.shown(p.fs.path), again)

    def _apply(
        self, conn: Connection, p: Prepared, vector: np.ndarray | None, added: list, removed: list
    ) -> None:
        """Write one prepared file; records FAISS changes in ``added``/``removed``."""
        old = images.find_by_path(conn, p.fs.path)
        now = time.time()
        base = {
            "path": p.fs.path,
            "root_id": p.root_id,
            "size": p.fs.size,
            "mtime_ns": p.fs.mtime_ns,
            "ctime_ns": p.fs.ctime_ns or None,
            "content_hash": p.content_hash,
            "updated_at": now,
        }
        if p.kind == "vanished":  # deleted between the walk and the read
            self._drop(conn, old, removed)
            self.report.removed += old is not None
            return None
        if p.kind == "known":
            src = images.find_by_id(conn, p.source) if p.source is not None else None
            if src is None or src.status != STATUS_INDEXED:  # gone since the worker looked
                src = images.find_indexed_by_hash(conn, p.content_hash, self.lib.model)
            if src is None:  # e.g. two files swapped names: its row was dropped just now
                src = self._dropped.get(p.content_hash or "")
            if src is None:
                p = Prepared(p.root_id, p.fs, "changed")
                return self._apply(conn, p, None, added, removed)
            if old is not None and src is not None and old.id == src.id:  # touched only
                images.update_file(conn, old.id, base)
                return
            self._drop(conn, old, removed)
            if self._moved_away(conn, src):  # moved or renamed
                images.update_file(conn, src.id, base)
                self.report.moved += 1
                return
            self.report.reused += 1
            vector = images.blob_to_vector(src.vector)
            row = {
                **base,
                "width": src.width,
                "height": src.height,
                "format": src.format,
                "label": src.label,
                "phash": src.phash,
            }
            self._insert_indexed(conn, row, vector, added)
        elif p.kind == "decoded":
            if vector is None:  # the model gave it none: it fails alone (_commit_isolated)
                raise ValueError("no vector for a decoded file")
            self._drop(conn, old, removed)
            row = {
                **base,
                "width": p.width,
                "height": p.height,
                "format": p.format,
                "label": p.label,
                "phash": p.phash,
            }
            self._insert_indexed(conn, row, vector, added)
        else:
            self._drop(conn, old, removed)
            later = p.kind in ("changed", "unreachable")  # tried again whatever its age
            retry = later or (p.retryable and now - p.fs.mtime_ns / 1e9 < RETRY_WINDOW_S)
            reason = "still being written; will retry" if p.kind == "changed" else p.reason
            if retry:
                reason = reason if later else f"{reason}; will retry"
                self.report.pending += 1
            else:
                self.report.failed += 1
            status = STATUS_PENDING if retry else STATUS_FAILED
            images.insert_unindexed(
                conn, base, status, reason, now + RETRY_DELAY_S if retry else None
            )

    def _insert_indexed(self, conn: Connection, row: dict, vector: np.ndarray, added: list) -> None:
        new_id = images.insert_indexed(conn, row, self.lib.model, vector)
        added.append((new_id, np.asarray(vector, dtype=np.float32)))

    def _drop(self, conn: Connection, old: Any, removed: list) -> None:
        if old is not None:
            images.delete_images(conn, [old.id])
            if old.status == STATUS_INDEXED:
                removed.append(old.id)
                self._dropped[old.content_hash] = old

    def _moved_away(self, conn: Connection, src: Any) -> bool:
        """True when ``src``'s file is gone from a root that is available (a file on an
        unplugged disk, or in a folder that cannot be read, has not moved: its row stays, and
        the new file gets a copy). Only a row of this host can have moved here: another
        host's path names a file on that host's disks, never looked at here."""
        if src.host != self.lib.host:
            return False
        if any(r.id == src.id for r in self._dropped.values()):
            return False  # its row was replaced in this batch (two files swapped names)
        if not vanished(src.path):
            return False  # a copy
        owner = _owner(src.path, list_roots(conn))
        return (
            owner is not None
            and root_available(owner[1])
            and not any(is_under(src.path, m) for m in self._gone_mounts())
        )

    # --- paths reported by the watcher -------------------------------------------------------

    def refresh_paths(self, paths: Iterable[str]) -> None:
        """Bring the library in line with the disk for these files or folders: what changed is
        embedded, what vanished removed. Paths under an unavailable root, and paths that cannot
        be looked at (in a folder that turned unreadable), are left alone."""
        with self.lib.engine.connect() as conn:
            roots = list_roots(conn)
        todo: list[tuple[int, FileStat]] = []
        missing: list[str] = []
        for path in paths:
            owner = _owner(path, roots)
            if owner is None or not root_available(owner[1]):
                continue
            if os.path.isdir(path):
                files, gone = self._scan(owner[0], Path(path))
                todo += files
                missing += gone
            elif os.path.isfile(path):
                todo += self._changed(owner[0], path)
            elif vanished(path):
                missing += self._under(path)
            else:
                log.warning("%s cannot be looked at: its rows are kept", path)
        unique = {fs.path: (rid, fs) for rid, fs in todo}  # a file and its folder both listed
        self.postponed = False
        self.ingest(unique.values())
        if not self.should_stop() and not self.postponed:
            self.remove_missing(missing)

    def _changed(self, root_id: int, path: str) -> list[tuple[int, FileStat]]:
        if not is_candidate(os.path.basename(path)):
            return []
        try:
            st = os.stat(path)
        except OSError:
            return []
        fs = FileStat(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self.lib.engine.connect() as conn:
            row = images.find_by_path(conn, path)
        if row is not None and is_current((row.size, row.mtime_ns, row.status, row.ctime_ns), fs):
            return []
        return [(root_id, fs)]

    def _under(self, path: str) -> list[str]:
        """Rows at ``path`` or below it (a deleted folder)."""
        with self.lib.engine.connect() as conn:
            return images.paths_at_or_under(conn, path)

    def move(self, src: str, dest: str) -> int:
        """Follow a rename of a file or folder in the database only: no read, no embedding.
        Returns how many rows moved; files the rows do not match are left to a refresh."""
        with self.lib.engine.connect() as conn:
            roots = list_roots(conn)
        owner = _owner(dest, roots)
        if owner is None:
            return 0
        self.lib.cache.load()  # caught up before this change commits
        with self.lib.engine.begin() as conn:
            moved, _dropped = images.move_paths(conn, src, dest, owner[0])
        self.lib.cache.catch_up()
        self.report.moved += moved
        return moved

    # --- removal and the end of a pass ----------------------------------------------------------

    def remove_missing(self, paths: Iterable[str]) -> int:
        """Delete the rows of files that are no longer on disk (moved rows were updated); files
        that cannot be looked at, or on a mount point whose disk is gone, are kept."""
        frozen = self._gone_mounts()
        gone = []
        self.lib.cache.load()  # caught up before this change commits
        with self.lib.engine.begin() as conn:
            for path in paths:
                row = images.find_by_path(conn, path)
                if (
                    row is not None
                    and vanished(path)
                    and not any(is_under(path, m) for m in frozen)
                ):
                    gone.append(row.id)
            images.delete_images(conn, gone)
        self.lib.cache.catch_up()
        self.report.removed += len(gone)
        return len(gone)

    def drain(self, final: bool = True) -> None:
        """Work is done for now: refresh clusters, rebuild the index if the library outgrew its
        kind, and save it (when ``final``, or when the last save is older than a checkpoint)."""
        self.lib.cache.catch_up()  # other hosts' writes too, on a shared database
        self.lib.cache.maybe_rebuild()
        if self.lib.maintains:
            vectors = self.lib.cache.index.all_vectors()  # after_drain checks the count
            with self.lib.engine.begin() as conn:
                organize.after_drain(conn, self.lib.k_setting, self.lib.dim, vectors)
        self.checkpoint(force=final)

    def checkpoint(self, force: bool = False) -> None:
        """Save the FAISS file if it is behind and the last save is older than a checkpoint:
        readers overlay the changes since, so saving a large index at every batch is waste."""
        if force or time.monotonic() - self._saved_at > self.checkpoint_s:
            self.lib.cache.save()
            self._saved_at = time.monotonic()


def prepare_file(
    root_id: int,
    fs: FileStat,
    known: Callable[[str], int | None],
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Prepared:
    """Read ``fs``, check it is stable, hash it, and either find its content already indexed
    or decode it at the model's input ``size``. ``known(hash)`` gives the id of an indexed row
    with that content, 0 for one to be looked up when the file is written, or None."""
    try:
        with open(fs.path, "rb") as fh:
            head = fh.read(64)
            if head and not looks_like_image(head):  # never read a huge non-image whole
                return Prepared(
                    root_id, fs, "failed", reason="not an image (format not recognised)"
                )
            data = head + fh.read()
        st = os.stat(fs.path)
    except FileNotFoundError:
        return Prepared(root_id, fs, "vanished")
    except OSError as exc:
        return Prepared(root_id, fs, "failed", reason=f"cannot read: {exc.strerror}")
    if (st.st_size, st.st_mtime_ns) != (fs.size, fs.mtime_ns) or len(data) != st.st_size:
        changed = FileStat(fs.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return Prepared(root_id, changed, "changed")
    fs = FileStat(fs.path, fs.size, fs.mtime_ns, st.st_ctime_ns)
    digest = hashlib.blake2b(data, digest_size=20).hexdigest()
    source = known(digest)
    if source is not None:
        return Prepared(root_id, fs, "known", digest, source=source or None)
    try:
        img = decode_for_model(data, size=size, max_pixels=max_pixels)
    except DecodeFailure as exc:
        return Prepared(root_id, fs, "failed", digest, reason=exc.reason, retryable=exc.retryable)
    return Prepared(
        root_id,
        fs,
        "decoded",
        digest,
        img.pixels,
        img.width,
        img.height,
        img.format,
        phash=img.phash,
    )


def embed_prepared(embedder: Embedder, batch: list[Prepared]) -> None:
    """Set each decoded file's vector (and ImageNet top-1 class, for models with a head).
    When the model fails on the batch, each file is tried alone, so the file it cannot take
    fails by itself with the model's reason."""
    if not batch:
        return
    try:
        _embed_all(embedder, batch)
    except EmbeddingPostponed:
        raise
    except Exception as exc:
        if len(batch) == 1:
            log.warning("model failed on %s: %s", names.shown(batch[0].fs.path), exc)
            batch[0].kind, batch[0].reason = "failed", f"the model failed on it: {exc}"
            return
        for p in batch:
            embed_prepared(embedder, [p])


def _embed_all(embedder: Embedder, batch: list[Prepared]) -> None:
    pixels = np.stack([p.pixels for p in batch if p.pixels is not None])
    labelled = getattr(embedder, "embed_labelled", None)
    if labelled is None:
        vectors, labels = embedder.embed(pixels), [None] * len(batch)
    else:
        vectors, labels = labelled(pixels)
    if len(vectors) != len(batch) or not np.isfinite(vectors).all():
        raise ValueError("it gave no finite vector")
    for p, vector, label in zip(batch, vectors, labels, strict=True):
        p.vector = np.asarray(vector, dtype=np.float32)
        p.label = None if label is None else int(label)


IMAGE_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG",
    b"GIF8",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
    b"P1",
    b"P2",
    b"P3",
    b"P4",
    b"P5",
    b"P6",
    b"P7",
)


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file could start a format we decode (cheap sniffing so a
    multi-gigabyte non-image is never read whole)."""
    if head.startswith(IMAGE_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp"  # HEIF, HEIC, AVIF (ISO base media)


def _owner(path: str | Path, roots: list[tuple[int, Path]]) -> tuple[int, Path] | None:
    """The ``(id, root)`` of the innermost root holding ``path``."""
    return root_of(path, roots, key=lambda pair: pair[1])


def is_current(row: tuple[int, int, str, int | None], fs: FileStat) -> bool:
    """Whether a row ``(size, mtime_ns, status, ctime_ns)`` is up to date with the file: same
    size and mtime, not pending, and for a failed file also the same ctime (a chmod or chown
    since it failed, e.g. of a file that could not be read, is worth another try)."""
    size, mtime_ns, status, ctime_ns = row
    if (size, mtime_ns) != (fs.size, fs.mtime_ns) or status == STATUS_PENDING:
        return False
    return status != STATUS_FAILED or ctime_ns == fs.ctime_ns


def mount_available(point: str) -> bool:
    """Whether a disk is still mounted at ``point`` (its device differs from its parent
    folder's) and holds something: a mount point that is gone is frozen like a root."""
    try:
        mounted = os.stat(point).st_dev != os.stat(os.path.dirname(point)).st_dev
    except OSError:
        return False
    return mounted and root_available(point)


def _ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int
) -> Generator[Any, None, None]:
    """``pool.map`` that keeps at most ``window`` items in flight (bounded memory)."""
    queue: deque[Future] = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= window:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
