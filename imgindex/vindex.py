"""The FAISS index: a rebuildable cache of the indexed vectors in SQLite.

The file holds a small header (magic, the ``index_version`` it reflects, dimension) and the
serialized FAISS index; it is replaced atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new file, never a torn one. Vector ids are
the ``images.id`` row ids, which are never reused.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"IMGIDX01"
HEADER = struct.Struct("<8sQI")  # magic, index_version, dim


class VectorIndex:
    """Inner-product (cosine, on unit vectors) search over ids -> vectors."""

    def __init__(self, dim: int, index: faiss.Index | None = None, version: int = -1) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.version = version

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of everything in the index; the matrix is a read-only view
        into FAISS's own storage (no copy), valid until the index changes."""
        ids = self.ids()
        flat = faiss.downcast_index(self.index.index)
        if isinstance(flat, faiss.IndexFlat) and len(ids):
            x = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * self.dim).reshape(len(ids), self.dim)
            x.flags.writeable = False
            return ids, x
        return ids, np.empty((0, self.dim), np.float32) if not len(
            ids
        ) else self.index.reconstruct_batch(ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            vecs = np.ascontiguousarray(vectors, dtype=np.float32)
            self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query row; missing neighbours have id -1."""
        k = max(1, min(k, self.size))
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        return self.index.search(q, k)

    # --- persistence ----------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex | None:
        """The index saved at ``path``, or None if it is missing, foreign or unreadable."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            magic, version, file_dim = HEADER.unpack_from(data)
            if magic != MAGIC or file_dim != dim:
                raise ValueError(f"header says {magic!r}, dim {file_dim}")
            payload = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size)
            index = faiss.deserialize_index(payload)
        except Exception as exc:  # a cache: anything wrong means rebuild from SQLite
            log.warning("ignoring unreadable index file %s (%s); rebuilding it", path, exc)
            return None
        return cls(dim, index, version)

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same directory, fsync, rename, fsync the dir."""
        payload = faiss.serialize_index(self.index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(HEADER.pack(MAGIC, max(self.version, 0), self.dim))
            fh.write(memoryview(payload))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
