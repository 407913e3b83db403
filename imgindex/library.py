"""A library: one data directory with its FAISS cache, lock and weights, and a table of record:
the SQLite file in the data dir, or a PostgreSQL database shared by several hosts (see
``imgindex.db.location``).

Opening never imports torch or scikit-learn: read commands (``similar`` on an indexed photo,
``clusters``, ``status``) only need SQLite, numpy and FAISS. Read commands never write the FAISS
cache: without a usable file they search an index built in memory; only the writer saves.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from imgindex import fsafe, hosts, store
from imgindex.cache import VectorCache
from imgindex.db import Connection, Engine, clusters, images, meta, queue
from imgindex.db.engine import make_engine, snapshot
from imgindex.db.host import for_host, host_of
from imgindex.db.location import Location, locate, record, url_for
from imgindex.db.locks import Maintenance, maintenance_holder
from imgindex.db.migrate import current_revision, ensure_schema, no_library
from imgindex.db.roots import add_root, all_roots, root_paths
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, STATUS_PENDING
from imgindex.db.transfer import Progress, Verification, copy_library
from imgindex.errors import ImgIndexError, LibraryNotFound, ModelMismatch
from imgindex.models import DEFAULT_MODEL, get_spec
from imgindex.paths import LibraryPaths
from imgindex.vindex import FLAT_MAX, VectorIndex

K_AUTO = "auto"
K_MAX = 4096  # the most clusters `init --k` accepts (fits cap k at half the images, see organize)

T = TypeVar("T")


@dataclass(frozen=True)
class Match:
    """One search result (``host``: the host whose file ``path`` is)."""

    path: str
    score: float
    cluster: int | None
    host: str = hosts.LOCAL


def _can_write(paths: LibraryPaths) -> bool:
    """Whether this process may write the data directory and its database (SQLite's WAL
    needs the folder too: it creates the -wal and -shm files there)."""
    return os.access(paths.root, os.W_OK) and os.access(paths.db, os.W_OK)


def _client_name(purpose: str) -> str:
    """How this process names its database sessions: its host and what it does."""
    return f"{hosts.this_host()} ({purpose})"


class Library:
    """An open library. Use ``Library.open`` or ``Library.create``; close it when done.

    Its engine works for one host (``db.host.for_host``; ``hosts.row_host`` when ``engine`` has
    none): the roots it walks, the rows of its files and its queue are that host's."""

    def __init__(
        self,
        paths: LibraryPaths,
        engine: Engine,
        lock: store.WriteLock | None,
        *,
        location: Location | None = None,
        flat_max: int = FLAT_MAX,
    ) -> None:
        self.paths = paths
        self.location = location or Location(paths)
        self.host = host_of(engine)  # IMGINDEX_HOST checked here: a bad one stops the open
        self.engine = for_host(engine, self.host)
        self._lock = lock
        #: the writer's claim to the cluster maintenance (see ``imgindex.db.locks``)
        self.maintenance = Maintenance(engine) if lock is not None else None
        self.read_only = False  # the database was opened read-only (see ``_open``)
        with snapshot(engine) as conn:
            self.model: str = meta.model(conn) or DEFAULT_MODEL
            self.dim: int = meta.dim(conn)
            self.k_setting: str = meta.k_setting(conn) or K_AUTO
            self.library_id: str | None = meta.library_id(conn)  # the writer creates it
        #: the FAISS cache; the writer loads it before its first commit (``cache.load``)
        self.cache = VectorCache(
            paths.root, self.dim, self.engine, writes=lock is not None, flat_max=flat_max
        )

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        data_dir: Path,
        roots: list[Path],
        *,
        k: str | None = None,
        model: str | None = None,
        flat_max: int = FLAT_MAX,
        database: str | None = None,
    ) -> Library:
        """Create a library (or add roots to an existing one) and open it for writing.
        ``database``: a PostgreSQL URL; the library there is created, or joined by this host."""
        paths = LibraryPaths(data_dir)
        location = locate(paths, database)
        paths.root.mkdir(parents=True, exist_ok=True)
        # no write lock: adding roots is one short transaction, and works while the daemon
        # runs (it notices config_version and starts watching the new roots)
        lib = cls._open(
            location, write=False, purpose="imgindex init", create=True, flat_max=flat_max
        )
        try:
            lib._configure(roots, k=k, model=model)
            record(location)
        except BaseException:
            lib.close()
            raise
        return lib

    @staticmethod
    def exists(data_dir: Path, database: str | None = None) -> bool:
        """Whether data dir ``data_dir`` (or ``database``) holds a library already."""
        location = locate(LibraryPaths(data_dir), database)
        if location.url is None:
            return location.paths.db.exists()
        engine = make_engine(location.url)
        try:
            return current_revision(engine) is not None
        finally:
            engine.dispose()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        write: bool = False,
        purpose: str = "imgindex",
        flat_max: int = FLAT_MAX,
        database: str | None = None,
    ) -> Library:
        """Open an existing library; ``write`` takes the library's write lock (one writer per
        data dir, so per host on a shared database). ``flat_max``: from this many vectors on,
        the writer's FAISS index is IVF rather than exact. ``database``: a PostgreSQL URL
        (else ``IMGINDEX_DATABASE_URL``, else the one the data dir records)."""
        paths = LibraryPaths(data_dir)
        location = locate(paths, database)
        if location.url is None and not paths.db.exists():
            raise LibraryNotFound(
                f"no library in {paths.root}; create one with `imgindex index DIR...` "
                "or `imgindex init DIR...` (or point --data-dir / IMGINDEX_DATA_DIR at an "
                "existing one, or --database / IMGINDEX_DATABASE_URL at a PostgreSQL one)"
            )
        if location.url is not None and write:
            if not cls.exists(data_dir, database):
                raise no_library(location.url)  # before a data dir is made for nothing
            paths.root.mkdir(parents=True, exist_ok=True)  # this host's cache and lock
        lib = cls._open(location, write=write, purpose=purpose, flat_max=flat_max)
        if write and location.url is not None and not paths.database_url.exists():
            record(location)  # this data dir now holds this library's cache
        return lib

    @classmethod
    def _open(
        cls,
        location: Location,
        *,
        write: bool,
        purpose: str,
        create: bool = False,
        flat_max: int = FLAT_MAX,
    ) -> Library:
        """Only ``create`` accepts a database without the schema or a model. A reader that
        cannot write the data directory opens a SQLite database read-only and migrates
        nothing (a server's permissions are the server's)."""
        paths = location.paths
        sqlite = location.url is None
        if sqlite and not create and paths.db.stat().st_size == 0:
            raise no_library(paths.db)  # before any connection writes a header into it
        read_only = sqlite and not (write or create or _can_write(paths))
        lock = store.WriteLock(paths.lock, purpose) if write else None
        if lock:
            lock.acquire()
        engine = make_engine(location.target, read_only=read_only, client=_client_name(purpose))
        try:
            ensure_schema(engine, location.target, create=create, read_only=read_only)
            lib = cls(paths, engine, lock, location=location, flat_max=flat_max)
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
            lib.cache.remove_leftovers()
            assert lib.maintenance is not None
            lib.maintenance.try_take()
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
        self.cache.reset(spec.dim)  # every vector left the log's set: the next load starts empty

    def move_to(self, url: str, progress: Progress | None = None) -> Verification:
        """Copy this SQLite library into the empty PostgreSQL database at ``url``, verify the
        copy (row counts and checksums, the vectors' among them), then switch the data dir to
        it. The SQLite file is kept beside, renamed ``imgindex.db.moved-to-postgresql``; the
        FAISS file stays valid (the changes log moves with the rows). Needs the write lock."""
        if not self.writable:
            raise ValueError("the library must be opened for writing")
        if self.location.url is not None:
            raise ImgIndexError(f"the library is in {self.location.shown()} already")
        target = Location(self.paths, url_for(url))
        engine = make_engine(url_for(url), client=_client_name("imgindex migrate"))
        try:
            result = copy_library(self.engine, engine, progress)
        finally:
            engine.dispose()
        self.engine.dispose()  # SQLite folds its WAL into the file at the last close
        record(target)
        self.paths.db.rename(self.paths.db.with_name(f"{self.paths.db.name}.moved-to-postgresql"))
        self.location = target
        self.engine = make_engine(url_for(url), client=_client_name("imgindex migrate"))
        return result

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def maintains(self) -> bool:
        """Whether this writer runs the cluster maintenance (on SQLite the writer always does;
        on PostgreSQL one writing host at a time, ``maintenance.try_take``)."""
        return self.maintenance is not None and self.maintenance.held

    def close(self) -> None:
        if self.maintenance is not None:
            self.maintenance.release()
        self.engine.dispose()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading (the FAISS index through ``self.cache``, see ``imgindex.cache``) ---------------

    def read(self, fn: Callable[[Connection, VectorIndex], T]) -> T:
        """``fn(conn, index)`` in one read snapshot with the index caught up to exactly that
        snapshot, so an answer never mixes two states of the library."""
        return self.cache.read(fn)

    def refresh(self) -> None:
        """Bring a long-lived reader up to date with the writer's changes (cheap when none;
        every ``read`` does it too)."""
        self.cache.catch_up()

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
            "database": self.location.describe(),
            "host": self.host,
            "roots": self._roots_status(conn),
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
            "maintenance": self._maintenance_status(conn),
            "daemon": self._daemon_status(meta.daemon_status(conn)),
        }

    def _maintenance_status(self, conn: Connection) -> str | None:
        """Who runs the cluster maintenance: ``"this writer"`` on SQLite when a writer is
        open, the holding session's name (its host) on PostgreSQL, else None."""
        holder = maintenance_holder(conn)
        if holder is None and self.location.url is None:
            return store.lock_holder(self.paths.lock)
        return holder

    def _roots_status(self, conn: Connection) -> list[dict[str, Any]]:
        """Every host's roots: ``available`` says whether this host's are there now (None for
        another host's: its disks are not this host's to look at)."""
        return [
            {"path": str(p), "host": h, "available": p.is_dir() if h == self.host else None}
            for h, p in all_roots(conn)
        ]

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
            "embedder": info.get("embedder") if running else None,  # which, and how many wait
            "writer": holder,
        }

    def failed(self) -> list[dict[str, Any]]:
        """Every host's failed and pending files, with their host and reason."""
        with self.engine.connect() as conn:
            rows = images.not_indexed(conn)
        return [{"host": h, "path": p, "reason": r, "status": s} for h, p, r, s in rows]

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
        return [
            Match(rows[i].path, float(exact[i]), rows[i].cluster_id, rows[i].host) for i in order
        ]
