"""The FAISS index: a rebuildable cache of the indexed vectors in SQLite.

Kind by library size: exact inner product (``flat``) while small; beyond ``FLAT_MAX`` an
inverted file over 4-bit scalar-quantised vectors (``ivf``), trained from the stored vectors,
rebuilt as the library grows, with ``nprobe`` tuned at build time so that its candidates hold
the exact top 10 (recall@10 >= ``RECALL_TARGET``). Callers re-score IVF candidates with the
exact vectors from SQLite, so scores are exact and memory is an eighth of float32.

Files are plain FAISS files named ``vectors.<seq>.faiss``, where ``seq`` is the position in the
``index_log`` table (changes appended by triggers) that the file reflects (on PostgreSQL the
position also holds a snapshot's ``xmin``, kept in the file's record: ``db.changes``). The writer
replaces them atomically (temp file, fsync, rename, fsync of the directory), hashing each while
writing it: a ``FileRecord`` (the library's id, BLAKE2b checksum, size, and the inode and times
the file got) is kept in SQLite, so a damaged or foreign file is recognised and never served.
Readers memory-map the newest one (a cold CLI process at a million vectors starts in
milliseconds) and overlay the log rows written since: the changed ids are masked out of the
file's answers and their current vectors searched exactly beside it. Vector ids are
``images.id`` row ids, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import faiss as _faiss
import numpy as np

from imgindex import diskspace, fsafe
from imgindex.db.changes import LogPosition

#: faiss's SWIG stubs miss DirectMap, the IO callbacks and subclasses' attributes
faiss: Any = _faiss

log = logging.getLogger(__name__)

FLAT_MAX = 32_768  # exact search below this many vectors (a few ms per query here)
RERANK = 4  # IVF candidates per wanted neighbour, re-scored exactly by the caller
MIN_CANDIDATES = 40
RECALL_TARGET = 0.97  # of the exact top 10 among the candidates, when tuning nprobe
TUNE_QUERIES = 256
FILE_RE = re.compile(r"^vectors\.(\d+)\.faiss$")
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC  # maps flat codes and inverted lists alike
HASH_CHUNK = 1 << 22


def file_name(seq: int) -> str:
    return f"vectors.{seq}.faiss"


@dataclass(frozen=True)
class FileRecord:
    """What the writer recorded about an index file it saved: whose it is and what it holds.

    ``xmin``: the second part of the file's log position (PostgreSQL; 0 on SQLite and in
    records of older versions, which makes its catch-up replay every row in the log).

    ``stamp``: ``(inode, mtime_ns, ctime_ns)`` the file had once in place. Any write to the
    file, or another file copied over it, changes them (ctime cannot be set back), so a file
    still bearing them is taken as unchanged without hashing it (hashing costs ~0.8 s per
    512 MB; mapping a file takes a millisecond); any other is hashed in full."""

    library: str
    blake2b: str
    size: int
    stamp: tuple[int, int, int] | None = None
    xmin: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> FileRecord | None:
        try:
            data = json.loads(text or "")
            stamp = data.get("stamp")
            return cls(
                data["library"],
                data["blake2b"],
                int(data["size"]),
                stamp and tuple(stamp),
                int(data.get("xmin", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def stamped(self, path: Path) -> FileRecord:
        """This record with the stamp ``path`` has now."""
        return replace(self, stamp=stamp_of(os.stat(path)))

    def mismatch(self, path: Path, library: str | None, *, full: bool = False) -> str | None:
        """Why ``path`` is not the file this records (None: it is). Hashes the whole file
        when ``full`` or when its stamp changed. Raises FileNotFoundError when it is gone."""
        if library is None or self.library != library:
            return "it was saved by another library"
        st = os.stat(path)
        if st.st_size != self.size:
            return f"it holds {st.st_size} bytes, not the {self.size} recorded when it was saved"
        if not full and self.stamp == stamp_of(st):
            return None
        if file_digest(path) != self.blake2b:
            return "its content does not match the checksum recorded when it was saved"
        return None


def stamp_of(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: Path) -> str:
    """BLAKE2b of a file's content, read in chunks."""
    h = hashlib.blake2b()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest sqrt(n)."""
    return int(2 ** round(np.log2(max(n, 1) ** 0.5)))


class VectorIndex:
    """Inner-product (cosine, on unit vectors) search over ids -> vectors.

    ``seq`` and ``xmin``: the ``index_log`` position this index reflects (``position``). A
    read-only index (memory-mapped) carries an overlay: ``changed`` ids hidden from the base
    and their current vectors."""

    def __init__(
        self, dim: int, index: faiss.Index | None = None, seq: int = 0, xmin: int = 0
    ) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        self.seq, self.xmin = seq, xmin
        # of the file it was read from or saved to (a reader's overlay starts there)
        self.base_seq, self.base_xmin = seq, xmin
        self.read_only = False
        self.path: Path | None = None
        self._changed = np.empty(0, np.int64)
        self._delta = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        self._params: faiss.SearchParameters | None = None
        self._sel: faiss.IDSelector | None = None  # kept alive: the params point to it
        self._hidden: int | None = None  # how many changed ids the base holds (lazy)

    # --- what it holds ------------------------------------------------------------------------

    @property
    def position(self) -> LogPosition:
        """The log position the index reflects."""
        return LogPosition(self.seq, self.xmin)

    @property
    def base_position(self) -> LogPosition:
        """The log position of the file it was read from or last saved to."""
        return LogPosition(self.base_seq, self.base_xmin)

    @property
    def ivf(self) -> faiss.IndexIVF | None:
        return faiss.try_extract_index_ivf(self.index)

    @property
    def approximate(self) -> bool:
        """Whether search returns candidates to re-score (IVF) rather than exact answers."""
        return self.ivf is not None

    @property
    def kind(self) -> str:
        ivf = self.ivf
        return "flat" if ivf is None else f"ivf{ivf.nlist},sq4 nprobe={ivf.nprobe}"

    @property
    def size(self) -> int:
        if not len(self._changed):
            return int(self.index.ntotal)
        if self._hidden is None:
            self._hidden = int(np.isin(self._changed, self.ids(base_only=True)).sum())
        return int(self.index.ntotal) - self._hidden + int(self._delta.ntotal)

    def ids(self, base_only: bool = False) -> np.ndarray:
        """Every id held (sorted when there is an overlay)."""
        base = _ids_of(self.index)
        if base_only or not len(self._changed):
            return base
        kept = base[~np.isin(base, self._changed)]
        return np.sort(np.concatenate([kept, faiss.vector_to_array(self._delta.id_map)]))

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, vectors)`` of everything in a writable flat index, as a read-only view into
        FAISS's own storage (no copy, valid until the index changes); None for other kinds."""
        if self.read_only or self.approximate:
            return None
        ids = _ids_of(self.index)
        if not len(ids):
            return ids, np.empty((0, self.dim), np.float32)
        flat = faiss.downcast_index(self.index.index)
        x = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * self.dim).reshape(len(ids), self.dim)
        x.flags.writeable = False
        return ids, x

    # --- changes (writable indexes) ----------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
            self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.ivf is not None:  # its hash-table direct map removes an array's ids directly
            return int(self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def apply(
        self, changed: np.ndarray, ids: np.ndarray, vectors: np.ndarray, at: LogPosition
    ) -> None:
        """Bring the index to log position ``at``: ``changed`` ids (from the log) are dropped
        and ``ids``/``vectors`` (those of them indexed now) added. Idempotent. A read-only
        index keeps them as its overlay instead, so there ``changed`` must be every id logged
        since ``base_position``."""
        if self.read_only:
            self._changed = np.unique(np.asarray(changed, np.int64))
            self._delta = faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
            self._delta.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self._changed))
            self._params = _params_for(self.index, sel) if len(self._changed) else None
            self._sel = sel
            self._hidden = None
        else:
            changed = np.asarray(changed, np.int64)
            if self.ivf is None:  # a flat removal moves every vector: only for ids it holds
                changed = changed[np.isin(changed, _ids_of(self.index))]
            self.remove(changed)
            self.add(ids, vectors)
        self.seq, self.xmin = at

    # --- search -------------------------------------------------------------------------------

    def candidates(self, k: int) -> int:
        """How many results to ask for when ``k`` are wanted (IVF answers get re-scored)."""
        return max(RERANK * k, MIN_CANDIDATES) if self.approximate else k

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query row, best first; missing ones have id -1.
        IVF scores are approximate (from 4-bit codes): re-score them when it matters."""
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        k = max(1, min(k, max(self.size, 1)))
        if self._params is not None:
            scores, ids = self.index.search(q, k, params=self._params)
        else:
            scores, ids = self.index.search(q, k)
        if self._delta.ntotal:
            d_scores, d_ids = self._delta.search(q, min(k, self._delta.ntotal))
            scores, ids = _merge(scores, ids, d_scores, d_ids, k)
        return scores, ids

    # --- files --------------------------------------------------------------------------------

    @classmethod
    def open_latest(
        cls,
        folder: Path,
        dim: int,
        *,
        mmap: bool,
        accept: Callable[[Path], FileRecord | None] | None = None,
    ) -> VectorIndex | None:
        """The newest index file in ``folder`` that ``accept`` vouches for, giving its record
        (memory-mapped, read-only when ``mmap``; at the log position of the file's name and
        record), or None when there is none usable (a cache: anything wrong means rebuild)."""
        for seq, path in sorted(index_files(folder), reverse=True):
            record = accept(path) if accept is not None else None
            if accept is not None and record is None:
                continue
            try:
                index = faiss.read_index(str(path), MMAP_FLAGS if mmap else 0)
            except RuntimeError as exc:
                if path.exists():
                    log.warning("ignoring unreadable index file %s (%s)", path, exc)
                continue  # replaced by a newer one while we looked: try again
            if index.d != dim:
                log.warning("ignoring %s: it holds %d-d vectors, not %d", path, index.d, dim)
                continue
            vi = cls(dim, index, seq, record.xmin if record is not None else 0)
            vi.read_only, vi.path = mmap, path
            if not mmap and vi.ivf is not None:  # the writer removes ids by hash table
                vi.ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return vi
        return None

    def write_temp(self, folder: Path, library: str) -> tuple[Path, FileRecord]:
        """Write the index to a temporary file in ``folder``, fsynced, and its record (hashed
        on the way). Leaves no temporary file when it fails; a full disk raises DiskFull."""
        path = folder / file_name(self.seq)
        ivf = self.ivf
        if ivf is not None:  # the file goes without the id hash table: mapping stays instant
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        try:
            tmp, (digest, size) = fsafe.write_temp(path, lambda fh: _write_hashed(self.index, fh))
        except OSError as exc:
            if not diskspace.is_full(exc):
                raise
            what = f"the vector index {path}"
            raise diskspace.no_room(folder, _serialized_size(self.index), what, exc) from exc
        finally:
            if ivf is not None:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return tmp, FileRecord(library, digest, size, xmin=self.xmin)

    def install(self, tmp: Path, path: Path) -> None:
        """Rename a written temporary file to ``path`` (atomically, durably): the index's file
        is now that one, at its position."""
        fsafe.atomic_replace(tmp, path)
        self.path = path
        self.base_seq, self.base_xmin = self.seq, self.xmin


def _write_hashed(index: faiss.Index, fh: IO[bytes]) -> tuple[str, int]:
    """Write ``index`` to ``fh``; its BLAKE2b and size, computed on the way."""
    h = hashlib.blake2b()
    size = 0

    def put(chunk: bytes) -> int:
        nonlocal size
        fh.write(chunk)
        h.update(chunk)
        size += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(put))
    return h.hexdigest(), size


def _serialized_size(index: faiss.Index) -> int:
    """Bytes ``index`` takes as a file (serialised without being kept)."""
    size = 0

    def count(chunk: bytes) -> int:
        nonlocal size
        size += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return size


def index_files(folder: Path) -> Iterator[tuple[int, Path]]:
    """``(seq, path)`` of every index file in ``folder``."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if m := FILE_RE.match(entry.name):
            yield int(m.group(1)), Path(entry.path)


def build_ivf(
    dim: int, train: np.ndarray, chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int
) -> faiss.Index:
    """An IVF-SQ4 index trained on ``train`` holding every chunk, with ``nprobe`` tuned so its
    candidates hold the exact top 10 of sample queries (exact answers found while adding)."""
    nlist = min(nlist_for(n), max(1, len(train) // 39))
    index = faiss.index_factory(dim, f"IVF{nlist},SQ4", faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(train, np.float32))
    rng = np.random.default_rng(n)
    queries = train[rng.choice(len(train), min(TUNE_QUERIES, len(train)), replace=False)]
    best = np.full((len(queries), 10), -np.inf, np.float32)
    best_ids = np.full((len(queries), 10), -1, np.int64)
    for ids, vecs in chunks:
        index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
        scores = queries @ vecs.T
        top = np.argsort(-scores, axis=1)[:, :10]
        best, best_ids = _merge(best, best_ids, np.take_along_axis(scores, top, 1), ids[top], 10)
    index.nprobe = _tune_nprobe(index, queries, best_ids)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # removals cost O(removed), not O(n)
    return index


def _tune_nprobe(index: faiss.IndexIVF, queries: np.ndarray, truth: np.ndarray) -> int:
    """The smallest power-of-two ``nprobe`` whose candidates hold ``RECALL_TARGET`` of the exact
    top 10 (re-scoring the candidates exactly then finds those, so that is the recall)."""
    kc = max(RERANK * 10, MIN_CANDIDATES)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, kc)
        hits = [len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)]
        recall = float(np.mean(hits)) / 10
        if recall >= RECALL_TARGET or nprobe >= index.nlist:
            break
        nprobe *= 2
    log.info("IVF %d lists: nprobe %d holds %.3f of the exact top 10", index.nlist, nprobe, recall)
    return nprobe


def read_file(path: Path) -> faiss.Index:
    """An index file, memory-mapped, for inspection (``ids_in``, ``vectors_in``)."""
    return faiss.read_index(str(path), MMAP_FLAGS)


def ids_in(index: faiss.Index) -> np.ndarray:
    """Every id an index holds, in its own order."""
    return _ids_of(index)


def vectors_in(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The vectors ``index`` holds for ``ids`` (held ids only): exact for a flat index,
    decoded from 4-bit codes (within ~0.99 cosine) for IVF."""
    ids = np.ascontiguousarray(ids, np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        if ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index.reconstruct_batch(ids)
    idmap = faiss.downcast_index(index)
    held = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    order = np.argsort(held, kind="stable")
    rows = order[np.searchsorted(held, ids, sorter=order)]
    flat = faiss.downcast_index(idmap.index)
    x = faiss.rev_swig_ptr(flat.get_xb(), len(held) * index.d).reshape(len(held), index.d)
    return x[rows].copy()


def _ids_of(index: faiss.Index) -> np.ndarray:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    lists = ivf.invlists
    parts = []
    for i in range(ivf.nlist):
        size = lists.list_size(i)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(i), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _params_for(index: faiss.Index, sel: faiss.IDSelector) -> faiss.SearchParameters:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
    return faiss.SearchParameters(sel=sel)


def _merge(
    s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of two result sets (missing entries: id -1)."""
    scores = np.concatenate([np.where(i1 >= 0, s1, -np.inf), np.where(i2 >= 0, s2, -np.inf)], 1)
    ids = np.concatenate([i1, i2], 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
