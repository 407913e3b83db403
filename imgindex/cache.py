"""The FAISS cache of one library: the life cycle of its ``VectorIndex`` beside SQLite.

SQLite is the table of record; the FAISS files ``vectors.<seq>.faiss`` are a cache of its
indexed vectors, checked against the record the writer kept of each (``vindex.FileRecord``).
``Library`` owns one ``VectorCache`` and callers drive it explicitly:

- ``load``: the newest verified file (the writer's read into memory, a reader's memory-mapped),
  or an index built from SQLite when none is usable; the writer saves it when it was missing or
  behind. The writer loads before its first commit: loading records files, so inside a
  transaction it would wait on that transaction's own lock.
- ``catch_up`` (after each commit of the writer's) and ``read``: replay the ``index_log`` rows
  written since; a reader overlays them on its mapped file, or maps the writer's newer file.
- ``save``: the writer's file, recorded before it appears, then the log trimmed.
- ``maybe_rebuild`` / ``rebuild``: the kind the library size calls for, exact below
  ``flat_max`` vectors, IVF past it (a reader's index built in memory is always exact).

Readers never write the cache: without a usable file they search an index built in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from imgindex import diskspace
from imgindex.db import Connection, Engine, changes, images, meta
from imgindex.db.engine import snapshot
from imgindex.errors import DiskFull, ImgIndexError
from imgindex.paths import LEGACY_INDEX_NAME
from imgindex.vindex import (
    FLAT_MAX,
    FileRecord,
    VectorIndex,
    build_ivf,
    file_name,
    index_files,
    nlist_for,
    stamp_of,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ATTEMPTS = 5  # tries at a consistent (file, snapshot) pair while a writer saves meanwhile


class VectorCache:
    """The FAISS index of the library in ``folder``, kept in step with its database.

    ``writes``: this process holds the write lock (it saves files; it alone changes the log).
    ``flat_max``: from this many vectors on, the writer's index is IVF rather than exact.
    ``tolerate_full_disk`` (the daemon sets it): a save that finds the disk full keeps the index
    in memory, remembers why in ``disk_full`` and retries once there is room, instead of
    raising ``DiskFull``."""

    def __init__(
        self, folder: Path, dim: int, engine: Engine, *, writes: bool, flat_max: int = FLAT_MAX
    ) -> None:
        self.folder = folder
        self.dim = dim
        self.engine = engine
        self.writes = writes
        self.flat_max = flat_max
        self.tolerate_full_disk = False
        self.disk_full: DiskFull | None = None  # why the writer's last save failed
        self._index: VectorIndex | None = None
        self._library_id: str | None = None  # read from the database once it exists
        self._warned: set[tuple[str, str]] = set()
        self._rejected: set[tuple[str, tuple[int, int, int]]] = set()  # (name, stamp) refused

    # --- the index held ----------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._index is not None

    @property
    def index(self) -> VectorIndex:
        """The index held (``load`` first), as of its last catch-up."""
        if self._index is None:
            raise RuntimeError("the vector index is not loaded: call VectorCache.load first")
        return self._index

    def load(self) -> VectorIndex:
        """Load the index unless held: the newest usable file, else one built from SQLite;
        the writer caught up to the log's head and saved when its file was missing or
        behind. Returns the index held."""
        if self._index is None:
            self._index = self._open()
            self.save()
        return self._index

    def current(self) -> VectorIndex:
        """The index as of now: the writer's held one, a reader's caught up with the database
        (``read`` gives the index and the rows of one snapshot together)."""
        if self.writes:
            return self.load()
        return self.read(lambda _conn, vi: vi)

    def reset(self, dim: int) -> None:
        """Forget the index held (every vector left the log's set, as when the model
        changes): the next ``load`` starts from the database."""
        self.dim = dim
        self._index = None

    def remove_leftovers(self) -> None:
        """Delete temporary files of a save a crash interrupted, and the single index file of
        versions before revision 0004 (writer)."""
        for stale in self.folder.glob(".vectors.*.tmp"):
            stale.unlink(missing_ok=True)
        (self.folder / LEGACY_INDEX_NAME).unlink(missing_ok=True)

    # --- catching up -------------------------------------------------------------------------

    def read(self, fn: Callable[[Connection, VectorIndex], T]) -> T:
        """``fn(conn, index)`` in one read snapshot with the index caught up to exactly that
        snapshot, so an answer never mixes two states of the library."""
        for _attempt in range(ATTEMPTS):
            vi = self.load()  # a file is opened before the snapshot: never newer than it
            with snapshot(self.engine) as conn:
                if self._caught_up(conn, vi):
                    return fn(conn, vi)
            self._index = None  # superseded by a newer file: map that one
        raise ImgIndexError(f"{self.folder}: the index keeps changing under us; try again")

    def catch_up(self) -> None:
        """Bring the index up to the database's latest commit: the writer replays what its
        last commit logged (nothing when not loaded: ``load`` catches up); a reader loads if
        needed, overlays the log, or maps the writer's newer file."""
        if not self.writes:
            self.read(lambda _conn, _vi: None)
            return
        if self._index is None:
            return
        with snapshot(self.engine) as conn:
            head, trimmed = changes.log_position(conn)
            if not changes.replayable(self._index.position, head, trimmed):
                # another host's writer trimmed rows we lack (PostgreSQL): ``save`` writes it
                self._index = self._build(conn, head)
            elif head != self._index.position:
                self._replay(conn, self._index, head)

    def _caught_up(self, conn: Connection, vi: VectorIndex) -> bool:
        """Bring ``vi`` to the log position of ``conn``'s snapshot; False when it cannot be
        (its file is older than the log's trimmed rows) or a reader should map a newer file."""
        head, trimmed = changes.log_position(conn)
        if not changes.replayable(vi.base_position if vi.read_only else vi.position, head, trimmed):
            return False
        if not self.writes and self._newer_file(vi):
            return False
        if vi.position != head:
            self._replay(conn, vi, head)
        return True

    def _open(self) -> VectorIndex:
        for _attempt in range(3):
            vi = VectorIndex.open_latest(
                self.folder, self.dim, mmap=not self.writes, accept=self._verified
            )
            with snapshot(self.engine) as conn:
                head, trimmed = changes.log_position(conn)
                if vi is None or not changes.replayable(vi.position, head, trimmed):
                    if vi is not None and vi.read_only and self._newer_file(vi):
                        continue  # the writer saved a newer file meanwhile: open that
                    vi = self._build(conn, head)  # a reader's stays in memory
                elif vi.position != head and not vi.read_only:  # a reader's: see ``read``
                    self._replay(conn, vi, head)
            return vi
        raise ImgIndexError(f"{self.folder}: the index keeps changing under us; try again")

    def _replay(self, conn: Connection, vi: VectorIndex, head: changes.LogPosition) -> None:
        """Apply the log rows after ``vi.position`` (a reader: after its file's): drop every
        changed id, add back the current vectors of those still indexed."""
        changed = changes.logged_since(conn, vi.base_position if vi.read_only else vi.position)
        vi.apply(changed, *images.vectors_for(conn, changed.tolist(), self.dim), at=head)
        log.debug("caught the vector index up with %d changed images", len(changed))

    # --- which files are usable ----------------------------------------------------------------

    def _newer_file(self, vi: VectorIndex) -> bool:
        """Whether a usable index file newer than ``vi``'s is there (a reader maps it)."""
        return any(
            s > vi.base_seq and self._verified(p) is not None for s, p in index_files(self.folder)
        )

    def _verified(self, path: Path) -> FileRecord | None:
        """The record of ``path`` when it is an index file this library's writer saved,
        unchanged since (checked against the record), else None; says once why not. A file
        refused once is not hashed again while it stays as it is. The record is read before
        the file is checked: a file replaced meanwhile by a newer save is newer than the
        position recorded, which only makes its catch-up re-read rows."""
        try:
            seen = (path.name, stamp_of(os.stat(path)))
        except FileNotFoundError:
            return None
        if seen in self._rejected:
            return None
        with self.engine.connect() as conn:
            record = FileRecord.from_json(meta.cache_record(conn, path.name))
        try:
            why = self._file_mismatch(path, record)
        except FileNotFoundError:
            return None  # replaced by a newer one while we looked
        if why is None:
            return record
        if not path.exists():  # its record went with it
            return None
        self._rejected.add(seen)
        if (path.name, why) not in self._warned:
            self._warned.add((path.name, why))
            then = (
                "rebuilding it from the database"
                if self.writes
                else "searching an index built in memory from the database (`imgindex index` "
                "or the daemon saves a verified one)"
            )
            log.warning("ignoring %s: %s; %s", path, why, then)
        return None

    def _library(self) -> str | None:
        """The library's id, which index files are recorded with (None before the writer
        created it; it never changes once there)."""
        if self._library_id is None:
            with self.engine.connect() as conn:
                self._library_id = meta.library_id(conn)
        return self._library_id

    def _file_mismatch(self, path: Path, record: FileRecord | None) -> str | None:
        """Why ``path`` is not the file ``record`` describes (None: it is)."""
        if record is None:
            return "no checksum was recorded for it (saved by an older imgindex, or copied in)"
        why = record.mismatch(path, self._library())
        if why is None and self.writes:
            fresh = record.stamped(path)
            if fresh != record:  # hashed in full (e.g. a restored copy): not again
                self._record(path.name, fresh)
        return why

    def _record(self, name: str, record: FileRecord) -> None:
        with self.engine.begin() as conn:
            meta.set_cache_record(conn, name, record.to_json())

    # --- building -----------------------------------------------------------------------------

    def _build(self, conn: Connection, head: changes.LogPosition) -> VectorIndex:
        """A new index of every indexed vector: of the kind the library size calls for when
        it will be saved (the writer's), else exact (a reader's, in memory)."""
        n = images.count_indexed(conn)
        chunks = ((ids, x) for ids, x, _ in images.iter_vectors(conn, self.dim))
        if n < self.flat_max or not self.writes:
            vi = VectorIndex(self.dim, seq=head.seq, xmin=head.xmin)
            for ids, x in chunks:
                vi.add(ids, x)
        else:
            train = images.sample_vectors(conn, min(n, 40 * nlist_for(n)), self.dim, seed=n)
            index = build_ivf(self.dim, train, chunks, n)
            vi = VectorIndex(self.dim, index, seq=head.seq, xmin=head.xmin)
        log.info("built the vector index (%s) from %d stored vectors", vi.kind, n)
        return vi

    def maybe_rebuild(self) -> bool:
        """Rebuild the writer's index when the library size calls for another kind: flat to
        IVF past ``flat_max``, IVF with more lists as it grows 4x. Returns whether it did."""
        vi = self.load()
        n, ivf = vi.size, vi.ivf
        if ivf is None:
            due = n >= self.flat_max
        else:
            due = n < self.flat_max // 2 or not (0.25 <= nlist_for(n) / ivf.nlist <= 2)
        if not due or not self.writes:
            return False
        self._build_and_save()
        return True

    def rebuild(self) -> VectorIndex:
        """Drop the index files, then build the index from SQLite and save it (writer)."""
        for _, path in index_files(self.folder):
            path.unlink(missing_ok=True)
        return self._build_and_save()

    def _build_and_save(self) -> VectorIndex:
        with snapshot(self.engine) as conn:
            vi = self._index = self._build(conn, changes.log_head(conn))
        self.save()
        return vi

    # --- saving -------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the writer's index if it changed since its file, then trim the log.

        A full disk raises DiskFull, unless ``tolerate_full_disk``: then it is logged once,
        kept in ``disk_full``, and saving waits until the room it lacked is free."""
        vi = self._index
        if vi is None or not self.writes or vi.read_only:
            return
        if vi.path is not None and vi.base_position == vi.position and vi.path.exists():
            return  # its file is at its position
        full = self.disk_full
        if full and self.tolerate_full_disk and diskspace.free_bytes(self.folder) < full.needed:
            return  # still no room for it
        try:
            self._save(vi)
        except DiskFull as exc:
            self.disk_full = exc
            if not self.tolerate_full_disk:
                raise
            if full is None:
                log.error("%s; the index is kept in memory and saved when there is room", exc)
            return
        if full is not None:
            log.info("saved the vector index: %s has room again", full.mount)
        self.disk_full = None

    def _save(self, vi: VectorIndex) -> None:
        """Save ``vi`` as ``vectors.<seq>.faiss``. Its record (this library's id, checksum)
        commits before the file appears under that name, so no reader finds it unrecorded;
        then the log is trimmed, and older files and their records go (a reader that mapped
        one keeps it until it closes)."""
        name = file_name(vi.seq)
        library = self._library()
        assert library is not None  # the writer created it on open
        tmp, record = vi.write_temp(self.folder, library)
        path = self.folder / name
        try:
            path.unlink(missing_ok=True)  # one of the same seq is never paired with this record
            self._record(name, record)
            vi.install(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self.engine.begin() as conn:
            meta.set_cache_record(conn, name, record.stamped(path).to_json())
            changes.trim_log(conn, vi.position)
        for seq, old in index_files(self.folder):
            if seq != vi.seq:
                old.unlink(missing_ok=True)
        with self.engine.begin() as conn:
            meta.drop_cache_records_except(conn, name)
