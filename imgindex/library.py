"""A library: one data directory with its SQLite database, FAISS cache and settings.

Opening never imports torch or scikit-learn: read commands (``similar`` on an indexed photo,
``clusters``, ``status``) only need SQLite, numpy and FAISS. Read commands never write the FAISS
cache: without a usable file they search an index built in memory; only the writer saves.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from imgindex import diskspace, fsafe, store
from imgindex.db import Connection, Engine, changes, clusters, images, meta, queue
from imgindex.db.engine import make_engine, snapshot
from imgindex.db.migrate import ensure_schema, no_library
from imgindex.db.roots import add_root, root_paths
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, STATUS_PENDING
from imgindex.errors import DiskFull, ImgIndexError, LibraryNotFound, ModelMismatch
from imgindex.models import DEFAULT_MODEL, get_spec
from imgindex.paths import LibraryPaths
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

K_AUTO = "auto"
K_MAX = 4096  # the most clusters `init --k` accepts (fits cap k at half the images, see organize)

T = TypeVar("T")


@dataclass(frozen=True)
class Match:
    """One search result."""

    path: str
    score: float
    cluster: int | None


def _can_write(paths: LibraryPaths) -> bool:
    """Whether this process may write the data directory and its database (SQLite's WAL
    needs the folder too: it creates the -wal and -shm files there)."""
    return os.access(paths.root, os.W_OK) and os.access(paths.db, os.W_OK)


class Library:
    """An open library. Use ``Library.open`` or ``Library.create``; close it when done."""

    def __init__(self, paths: LibraryPaths, engine: Engine, lock: store.WriteLock | None) -> None:
        self.paths = paths
        self.engine = engine
        self._lock = lock
        self._vindex: VectorIndex | None = None
        self.read_only = False  # the database was opened read-only (see ``_open``)
        with snapshot(engine) as conn:
            self.model: str = meta.model(conn) or DEFAULT_MODEL
            self.dim: int = meta.dim(conn)
            self.k_setting: str = meta.k_setting(conn) or K_AUTO
            self.library_id: str | None = meta.library_id(conn)  # the writer creates it
        self.disk_full: DiskFull | None = None  # why the writer's last save failed
        self.tolerate_full_disk = False  # the daemon: keep the index in memory, retry later
        self._warned: set[tuple[str, str]] = set()
        self._rejected: set[tuple[str, tuple[int, int, int]]] = set()  # (name, stamp) refused

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, data_dir: Path, roots: list[Path], *, k: str | None = None, model: str | None = None
    ) -> Library:
        """Create a library (or add roots to an existing one) and open it for writing."""
        paths = LibraryPaths(data_dir)
        paths.root.mkdir(parents=True, exist_ok=True)
        # no write lock: adding roots is one short transaction, and works while the daemon
        # runs (it notices config_version and starts watching the new roots)
        lib = cls._open(paths, write=False, purpose="imgindex init", create=True)
        try:
            lib._configure(roots, k=k, model=model)
        except BaseException:
            lib.close()
            raise
        return lib

    @classmethod
    def open(cls, data_dir: Path, *, write: bool = False, purpose: str = "imgindex") -> Library:
        """Open an existing library; ``write`` takes the library's write lock."""
        paths = LibraryPaths(data_dir)
        if not paths.db.exists():
            raise LibraryNotFound(
                f"no library in {paths.root}; create one with `imgindex index DIR...` "
                "or `imgindex init DIR...` (or point --data-dir / IMGINDEX_DATA_DIR at an "
                "existing one)"
            )
        return cls._open(paths, write=write, purpose=purpose)

    @classmethod
    def _open(
        cls, paths: LibraryPaths, *, write: bool, purpose: str, create: bool = False
    ) -> Library:
        """Only ``create`` accepts a database without the schema or a model. A reader that
        cannot write the data directory opens the database read-only and migrates nothing."""
        if not create and paths.db.stat().st_size == 0:
            raise no_library(paths.db)  # before any connection writes a header into it
        read_only = not (write or create or _can_write(paths))
        lock = store.WriteLock(paths.lock, purpose) if write else None
        if lock:
            lock.acquire()
        engine = make_engine(paths.db, read_only=read_only)
        try:
            ensure_schema(engine, paths.db, create=create, read_only=read_only)
            lib = cls(paths, engine, lock)
            lib.read_only = read_only
            if lib.dim:
                lib._check_model()
            elif not create:
                raise LibraryNotFound(
                    f"the library in {paths.root} was never set up (an interrupted "
                    "`imgindex init`?); run `imgindex init DIR...` again"
                )
            if write and lib.library_id is None:  # a library made before ids existed
                with engine.begin() as conn:
                    lib.library_id = lib._identity(conn)
        except BaseException:
            engine.dispose()
            if lock:
                lock.release()
            raise
        if write:
            for stale in paths.root.glob(".vectors.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a crash during a save
            paths.legacy_index.unlink(missing_ok=True)
        return lib

    def _identity(self, conn: Any) -> str:
        """The library's id (created when missing): index files are recorded as its own."""
        found = meta.library_id(conn)
        if found is None:
            found = uuid.uuid4().hex
            meta.set_library_id(conn, found)
        return found

    def _configure(self, roots: list[Path], *, k: str | None, model: str | None) -> None:
        with self.engine.begin() as conn:
            self.library_id = self._identity(conn)
            if not self.dim:
                spec = get_spec(model or DEFAULT_MODEL)
                meta.set_model(conn, spec.name, spec.dim)
                meta.set_created_at(conn, time.time())
                self.model, self.dim = spec.name, spec.dim
            elif model and get_spec(model).name != self.model:
                raise self._mismatch(model)
            if k is not None:
                meta.set_k_setting(conn, k)
                self.k_setting = k
            existing = root_paths(conn)
            for root in roots:
                for other in existing:
                    if root != other and fsafe.overlaps(root, other):
                        raise ImgIndexError(
                            f"{root} and root {other} would overlap; a folder can belong to "
                            "one root only"
                        )
                add_root(conn, root)
            meta.bump_config_version(conn)

    def _check_model(self) -> None:
        spec = get_spec(self.model)
        if spec.dim != self.dim:
            raise ModelMismatch(
                f"library {self.paths.root} holds {self.dim}-d vectors but model {self.model} "
                f"makes {spec.dim}-d ones; rebuild with `imgindex reindex --model {self.model}`"
            )

    def _mismatch(self, wanted: str) -> ModelMismatch:
        return ModelMismatch(
            f"library {self.paths.root} was built with model {self.model}, not {wanted}; "
            f"to switch, run `imgindex reindex --model {wanted}` (re-embeds every image)"
        )

    def switch_model(self, model: str) -> None:
        """Forget every vector and cluster and adopt ``model``; every image becomes pending,
        so the next pass re-embeds it. One transaction: vectors of two models never mix."""
        spec = get_spec(model)
        with self.engine.begin() as conn:
            images.forget_all_vectors(conn, "waiting to be embedded with the new model")
            clusters.forget(conn)
            meta.set_model(conn, spec.name, spec.dim)
        self.model, self.dim = spec.name, spec.dim
        self._vindex = None  # every vector left the log's set: the next use starts empty

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def close(self) -> None:
        self.engine.dispose()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the FAISS cache ------------------------------------------------------------------------

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, caught up with SQLite. The writer holds it in memory and changes
        it; a reader memory-maps the newest file and overlays the changes made since (as of
        now: ``read`` gives the index and the rows of one snapshot together)."""
        if not self.writable:
            return self.read(lambda _conn, vi: vi)
        return self._loaded()

    def _loaded(self) -> VectorIndex:
        if self._vindex is None:
            self._vindex = self._load_index()
            self.save_index()  # the writer's file, when it was missing or behind
        return self._vindex

    def read(self, fn: Callable[[Connection, VectorIndex], T]) -> T:
        """``fn(conn, index)`` in one read snapshot with the index caught up to exactly that
        snapshot, so an answer never mixes two states of the library."""
        for _attempt in range(5):
            vi = self._loaded()  # a file is opened before the snapshot: never newer than it
            with snapshot(self.engine) as conn:
                if self._catch_up(conn, vi):
                    return fn(conn, vi)
            self._vindex = None  # superseded by a newer file: map that one
        raise ImgIndexError(f"{self.paths.root}: the index keeps changing under us; try again")

    def _catch_up(self, conn: Connection, vi: VectorIndex) -> bool:
        """Bring ``vi`` to the log position of ``conn``'s snapshot; False when it cannot be
        (its file is older than the log's trimmed rows) or a reader should map a newer file."""
        head, trimmed = changes.log_position(conn)
        if not trimmed <= (vi.base_seq if vi.read_only else vi.seq) <= head:
            return False
        if not self.writable and self._newer_file(vi):
            return False
        if vi.seq != head:
            self._replay(conn, vi, head)
        return True

    def _load_index(self) -> VectorIndex:
        for _attempt in range(3):
            vi = VectorIndex.open_latest(
                self.paths.root, self.dim, mmap=not self.writable, accept=self._usable
            )
            with snapshot(self.engine) as conn:
                head, trimmed = changes.log_position(conn)
                if vi is None or vi.seq < trimmed or vi.seq > head:
                    if vi is not None and vi.read_only and vi.seq < trimmed:
                        continue  # the writer saved a newer file meanwhile: open that
                    vi = self._rebuild(conn, head)  # a reader's stays in memory
                elif vi.seq < head and not vi.read_only:  # a reader's overlay: see ``read``
                    self._replay(conn, vi, head)
            return vi
        raise ImgIndexError(f"{self.paths.root}: the index keeps changing under us; try again")

    def _newer_file(self, vi: VectorIndex) -> bool:
        """Whether a usable index file newer than ``vi``'s is there (a reader maps it)."""
        return any(s > vi.base_seq and self._usable(p) for s, p in index_files(self.paths.root))

    def _usable(self, path: Path) -> bool:
        """Whether ``path`` is an index file this library's writer saved, unchanged since
        (checked against its record); says once why not. A file refused once is not hashed
        again while it stays as it is."""
        try:
            seen = (path.name, stamp_of(os.stat(path)))
        except FileNotFoundError:
            return False
        if seen in self._rejected:
            return False
        with self.engine.connect() as conn:
            record = FileRecord.from_json(meta.cache_record(conn, path.name))
        try:
            why = self._file_mismatch(path, record)
        except FileNotFoundError:
            return False  # replaced by a newer one while we looked
        if why is None:
            return True
        if not path.exists():  # its record went with it
            return False
        self._rejected.add(seen)
        if (path.name, why) not in self._warned:
            self._warned.add((path.name, why))
            then = (
                "rebuilding it from the database"
                if self.writable
                else "searching an index built in memory from the database (`imgindex index` "
                "or the daemon saves a verified one)"
            )
            log.warning("ignoring %s: %s; %s", path, why, then)
        return False

    def _file_mismatch(self, path: Path, record: FileRecord | None) -> str | None:
        """Why ``path`` is not the file ``record`` describes (None: it is)."""
        if record is None:
            return "no checksum was recorded for it (saved by an older imgindex, or copied in)"
        why = record.mismatch(path, self.library_id)
        if why is None and self.writable:
            fresh = record.stamped(path)
            if fresh != record:  # hashed in full (e.g. a restored copy): not again
                self._record(path.name, fresh)
        return why

    def _record(self, name: str, record: FileRecord) -> None:
        with self.engine.begin() as conn:
            meta.set_cache_record(conn, name, record.to_json())

    def _replay(self, conn: Any, vi: VectorIndex, head: int) -> None:
        """Apply the log rows after ``vi.seq`` (a reader: after its file's): drop every changed
        id, add back the current vectors of those still indexed."""
        changed = changes.logged_since(conn, vi.base_seq if vi.read_only else vi.seq)
        vi.apply(changed, *images.vectors_for(conn, changed.tolist(), self.dim), seq=head)
        log.debug("caught the vector index up with %d changed images", len(changed))

    def _rebuild(self, conn: Any, head: int) -> VectorIndex:
        """A new index of every indexed vector: of the kind the library size calls for when
        it will be saved (the writer's), else exact (a reader's, in memory)."""
        n = images.count_indexed(conn)
        chunks = ((ids, x) for ids, x, _ in images.iter_vectors(conn, self.dim))
        if n < self.flat_max or not self.writable:
            vi = VectorIndex(self.dim, seq=head)
            for ids, x in chunks:
                vi.add(ids, x)
        else:
            train = images.sample_vectors(conn, min(n, 40 * nlist_for(n)), self.dim, seed=n)
            vi = VectorIndex(self.dim, build_ivf(self.dim, train, chunks, n), seq=head)
        log.info("built the vector index (%s) from %d stored vectors", vi.kind, n)
        return vi

    def sync_index(self) -> None:
        """Replay into the writer's index what the last commit logged (a batch's rows)."""
        if self._vindex is None:
            return
        with self.engine.connect() as conn:
            head = changes.log_head(conn)
            if head != self._vindex.seq:
                self._replay(conn, self._vindex, head)

    def maybe_rebuild(self) -> bool:
        """Rebuild the writer's index when the library size calls for another kind: flat to
        IVF past ``flat_max``, IVF with more lists as it grows 4x. Returns whether it did."""
        vi = self.vectors
        n, ivf = vi.size, vi.ivf
        if ivf is None:
            due = n >= self.flat_max
        else:
            due = n < self.flat_max // 2 or not (0.25 <= nlist_for(n) / ivf.nlist <= 2)
        if not due or not self.writable:
            return False
        with self.engine.connect() as conn:
            self._vindex = self._rebuild(conn, changes.log_head(conn))
        self.save_index()
        return True

    @property
    def flat_max(self) -> int:
        with self.engine.connect() as conn:
            return meta.flat_max(conn, FLAT_MAX)

    def refresh(self) -> None:
        """Bring a long-lived reader up to date with the writer's changes (cheap when none;
        every ``read`` does it too)."""
        if not self.writable:
            self.read(lambda _conn, _vi: None)

    def rebuild_index(self) -> None:
        """Drop the index files and build and save the index again from SQLite (writer)."""
        for _, path in index_files(self.paths.root):
            path.unlink(missing_ok=True)
        with self.engine.connect() as conn:
            self._vindex = self._rebuild(conn, changes.log_head(conn))
        self.save_index()

    def save_index(self, vi: VectorIndex | None = None) -> None:
        """Write the writer's index if it changed since its file, then trim the log.

        A full disk raises DiskFull, unless ``tolerate_full_disk`` (the daemon): then it is
        logged once, kept in ``disk_full``, and saving waits until the room it lacked is free."""
        vi = vi or self._vindex
        if vi is None or not self.writable or vi.read_only:
            return
        if vi.path is not None and vi.path.name == file_name(vi.seq) and vi.path.exists():
            return
        full = self.disk_full
        if full and self.tolerate_full_disk and diskspace.free_bytes(self.paths.root) < full.needed:
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
        folder, name = self.paths.root, file_name(vi.seq)
        assert self.library_id is not None  # the writer created it on open
        tmp, record = vi.write_temp(folder, self.library_id)
        path = folder / name
        try:
            path.unlink(missing_ok=True)  # one of the same seq is never paired with this record
            self._record(name, record)
            vi.install(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self.engine.begin() as conn:
            meta.set_cache_record(conn, name, record.stamped(path).to_json())
            changes.trim_log(conn, vi.seq)
        for seq, old in index_files(folder):
            if seq != vi.seq:
                old.unlink(missing_ok=True)
        with self.engine.begin() as conn:
            meta.drop_cache_records_except(conn, name)

    # --- reading ------------------------------------------------------------------------------

    def roots(self) -> list[Path]:
        with self.engine.connect() as conn:
            return root_paths(conn)

    def status(self) -> dict[str, Any]:
        """Settings and counts, as ``imgindex status`` shows them (all from one snapshot)."""
        return self.read(self._status)

    def _status(self, conn: Connection, vi: VectorIndex) -> dict[str, Any]:
        counts = images.count_by_status(conn)
        return {
            "data_dir": str(self.paths.root),
            "roots": [{"path": str(p), "available": p.is_dir()} for p in root_paths(conn)],
            "model": self.model,
            "dim": self.dim,
            "k": self.k_setting,
            "clusters": clusters.count(conn),
            "indexed": counts.get(STATUS_INDEXED, 0),
            "failed": counts.get(STATUS_FAILED, 0),
            "pending": counts.get(STATUS_PENDING, 0),
            "index_size": vi.size,
            "index_kind": vi.kind,
            "embedded_total": meta.embedded_total(conn),
            "queued": queue.count(conn),
            "daemon": self._daemon_status(meta.daemon_status(conn)),
        }

    def _daemon_status(self, info: dict[str, Any]) -> dict[str, Any]:
        holder = store.lock_holder(self.paths.lock)
        running = bool(holder and "daemon" in holder)
        return {
            "running": running,
            "state": info.get("state", "never run") if running else "not running",
            "pid": info.get("pid") if running else None,
            "heartbeat": info.get("heartbeat"),
            "roots": info.get("roots", {}) if running else {},
            "problem": info.get("problem") if running else None,
            "writer": holder,
        }

    def failed(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [{"path": p, "reason": r, "status": s} for p, r, s in images.not_indexed(conn)]

    def search_stored(self, paths: list[Path], k: int = 10) -> list[Match] | None:
        """The ``k`` nearest images to the first of ``paths`` that is indexed and unchanged,
        by its stored vector, in one snapshot with the search; None when none is."""

        def run(conn: Connection, vi: VectorIndex) -> list[Match] | None:
            for path in paths:
                if (stored := self._stored_vector(conn, path)) is not None:
                    return self._search(conn, vi, stored[1], k, exclude=stored[0])
            return None

        return self.read(run)

    def _stored_vector(self, conn: Connection, path: Path) -> tuple[int, np.ndarray] | None:
        """``(id, vector)`` of an indexed, unchanged file, or None."""
        row = images.find_by_path(conn, str(path))
        if row is None or row.status != STATUS_INDEXED or row.model != self.model:
            return None
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            return None
        return row.id, images.blob_to_vector(row.vector)

    def search(self, vector: np.ndarray, k: int = 10, exclude: int | None = None) -> list[Match]:
        """The ``k`` nearest indexed images to ``vector`` (cosine), best first, read from one
        snapshot. Candidates of an approximate (IVF) index are re-scored with their exact
        vectors from SQLite."""
        return self.read(lambda conn, vi: self._search(conn, vi, vector, k, exclude))

    def _search(
        self, conn: Connection, vi: VectorIndex, vector: np.ndarray, k: int, exclude: int | None
    ) -> list[Match]:
        n = vi.candidates(k + (exclude is not None))
        while True:
            _scores, ids = vi.search(vector, n)
            found = [int(i) for i in ids[0] if i >= 0 and i != exclude]
            rows = images.indexed_by_ids(conn, found)
            if len(rows) >= k or np.count_nonzero(ids[0] >= 0) < n:
                break
            n *= 2  # some candidates were not indexed (a stale index): ask for more
        if not rows:
            return []
        exact = images.stack_blobs([r.vector for r in rows], self.dim) @ np.ravel(vector)
        order = np.argsort(-exact, kind="stable")[:k]
        return [Match(rows[i].path, float(exact[i]), rows[i].cluster_id) for i in order]
