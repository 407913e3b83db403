"""``imgindex duplicates``: groups of exact and near duplicates among the indexed images.

Three tiers find pairs; groups are the connected components of all pairs found:

- ``exact``: the same content hash (identical bytes);
- ``phash``: perceptual hashes (64-bit DCT hash of the whole upright picture) at most
  ``max_distance`` bits apart: resized, recompressed, re-encoded and grey copies hash alike;
- ``vector``: embeddings at cosine ``threshold`` or more (FAISS neighbours, re-scored exactly
  with the stored vectors): catches edits the hash misses (crops, mirror images).

Only SQLite and the FAISS cache are read: no model, no decoding. Failed and pending files take
no part. Defaults measured with the default model (``python bench/duplicates.py --caltech``): of
caltech-dev's 826k pairs, the 10 within 4 bits and the 5 at cosine >= 0.97 are all one
photograph twice; the nearest different photographs are 6 bits (2 pairs) and cosine 0.90 apart
(pairs at 0.90-0.97 there are crops, recolours and retouches of one photograph). Copies
in the near-duplicates corpus: resize, grey and format copies 0 bits away (cosine 0.80-1.0);
a mirror image at cosine 0.974 (grouped); a 20-degree rotation at 0.82 (not grouped).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from imgindex.db import Connection, images
from imgindex.errors import ImgIndexError
from imgindex.library import Library

DEFAULT_THRESHOLD = 0.97  # cosine of the vector tier
DEFAULT_MAX_DISTANCE = 4  # pHash bits
MAX_DISTANCE_LIMIT = 16  # beyond, hash buckets grow too coarse to scale (and pairs are noise)
NEIGHBOURS = 10  # FAISS neighbours per image examined by the vector tier
APPROX_MARGIN = 0.05  # IVF-SQ4 scores are approximate: re-score candidates this much below
CHUNK = 4096  # images per FAISS query batch


@dataclass(frozen=True)
class Member:
    """One image of a group. ``score``: cosine of its embedding to the group's first member's
    (1.0 for the first member and for exact copies of it); ``kind``: ``first``, ``exact``
    (same bytes as the first) or ``near``; ``distance``: pHash bits from the first member
    (None when either has no hash); ``host``: the host whose file ``path`` is."""

    path: str
    score: float
    kind: str
    distance: int | None
    host: str = ""
    id: int = 0  # the image's id (its row)


@dataclass(frozen=True)
class Group:
    """Duplicates of one picture, the largest first; ``reason``: the tiers that linked them."""

    members: list[Member]
    reason: list[str]


@dataclass(frozen=True)
class _Rows:
    """The indexed images, by id."""

    ids: np.ndarray  # int64, sorted
    paths: list[str]
    hosts: list[str]
    hashes: np.ndarray  # content hashes (str objects; '' when unknown)
    phashes: np.ndarray  # int64; valid where has_phash
    has_phash: np.ndarray
    sort_key: list[tuple]  # which member comes first: most pixels, largest file, path


def find_duplicates(
    lib: Library,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> list[Group]:
    """Every group of two or more duplicate images, largest groups first."""
    if not 0 < threshold <= 1:
        raise ImgIndexError(f"--threshold {threshold}: expected a cosine in (0, 1]")
    if not 0 <= max_distance <= MAX_DISTANCE_LIMIT:
        raise ImgIndexError(
            f"--max-distance {max_distance}: expected 0 to {MAX_DISTANCE_LIMIT} bits"
        )
    with lib.engine.connect() as conn:
        rows = _load_rows(conn)
    n = len(rows.ids)
    if n < 2:
        return []
    with_hash = np.flatnonzero(rows.has_phash)
    tiers = {
        "exact": exact_pairs(rows.hashes),
        "phash": with_hash[phash_pairs(rows.phashes[with_hash], max_distance)],
        "vector": _positions(rows.ids, vector_pairs(lib, threshold)),
    }
    labels = _components(n, [p for p in tiers.values() if len(p)])
    reasons = {t: set(labels[p[:, 0]].tolist()) for t, p in tiers.items()}
    order = np.argsort(labels, kind="stable")
    members = [m for m in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1) if len(m) > 1]
    with lib.engine.connect() as conn:
        grouped = rows.ids[np.concatenate(members)] if members else np.empty(0, np.int64)
        got, vecs = images.vectors_for(conn, grouped.tolist(), lib.dim)
    by_id = dict(zip(got.tolist(), vecs, strict=True))
    groups = [
        _group(rows, m, by_id, [t for t in tiers if labels[m[0]] in reasons[t]]) for m in members
    ]
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0].path))


def _components(n: int, pairs: list[np.ndarray]) -> np.ndarray:
    """Component label of each of ``n`` positions in the graph of ``pairs``."""
    edges = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _load_rows(conn: Connection) -> _Rows:
    rows = images.fingerprints(conn)
    phashes = [r.phash for r in rows]
    return _Rows(
        ids=np.array([r.id for r in rows], dtype=np.int64),
        paths=[r.path for r in rows],
        hosts=[r.host for r in rows],
        hashes=np.array([r.content_hash or "" for r in rows], dtype=object),
        phashes=np.array([0 if p is None else p for p in phashes], dtype=np.int64),
        has_phash=np.array([p is not None for p in phashes], dtype=bool),
        sort_key=[(-(r.width or 0) * (r.height or 0), -r.size, r.path) for r in rows],
    )


def exact_pairs(hashes: np.ndarray) -> np.ndarray:
    """Position pairs ``(first, other)`` joining each image to the first one of the same
    content hash (a star per hash: enough for components); empty hashes match nothing."""
    known = np.flatnonzero(hashes != "")
    _, first, inverse = np.unique(hashes[known], return_index=True, return_inverse=True)
    a, b = known[first[inverse]], known
    return np.stack([a[a != b], b[a != b]], axis=1).astype(np.int64)


def phash_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Position pairs ``(i, j)``, i < j, of int64 ``hashes`` at most ``max_distance`` bits apart.

    Multi-index hashing: the 64 bits are cut into ``max_distance + 1`` ranges; two hashes that
    close agree on at least one range (pigeonhole), so only pairs sharing a range's value (a
    bucket) are compared. Cost: the candidate pairs, about n² / 2^(64 / (max_distance + 1))."""
    u = np.ascontiguousarray(hashes, dtype=np.int64).view(np.uint64)
    bounds = np.linspace(0, 64, max_distance + 2).round().astype(int).tolist()
    found = []
    for lo, hi in pairwise(bounds):
        key = (u >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        for a, b in _same_key_pairs(key):
            close = _popcount(u[a] ^ u[b]) <= max_distance
            found.append(np.stack([np.minimum(a, b)[close], np.maximum(a, b)[close]], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)


def _same_key_pairs(key: np.ndarray):
    """Yield batches ``(a, b)`` of position pairs with equal ``key``, every pair once: after a
    stable sort, position i pairs with i + offset while the key stays the same (at most n pairs
    per batch, so memory stays linear)."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    active = np.flatnonzero(k[1:] == k[:-1]) if len(k) > 1 else np.empty(0, np.int64)
    offset = 1
    while len(active):
        yield order[active], order[active + offset]
        offset += 1
        active = active[active + offset < len(k)]
        active = active[k[active + offset] == k[active]]


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each 64-bit word (as unsigned: numpy counts a signed one's absolute value)."""
    x = np.ascontiguousarray(x).view(np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def vector_pairs(lib: Library, threshold: float, k: int = NEIGHBOURS) -> np.ndarray:
    """Image id pairs ``(a, b)``, a < b, whose stored vectors are at cosine ``threshold`` or
    more: each image's ``k`` nearest neighbours from FAISS, re-scored with the exact vectors."""
    vi = lib.cache.current()
    floor = threshold - (APPROX_MARGIN if vi.approximate else 0.0)
    found = [np.empty((0, 2), np.int64)]
    with lib.engine.connect() as conn:
        for ids, x, _ in images.iter_vectors(conn, lib.dim, chunk=CHUNK):
            scores, nbrs = vi.search(x, vi.candidates(k + 1))
            row, col = np.nonzero((nbrs >= 0) & (nbrs != ids[:, None]) & (scores >= floor))
            if not len(row):
                continue
            wanted = nbrs[row, col]
            got, vecs = images.vectors_for(conn, np.unique(wanted).tolist(), lib.dim)
            there, at = _lookup(got, wanted)
            row, at = row[there], at[there]
            close = np.einsum("ij,ij->i", x[row], vecs[at]) >= threshold
            a, b = ids[row[close]], got[at[close]]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, at)``: whether each of ``wanted`` is in ``keys`` (unsorted, unique) and where."""
    if not len(keys):
        return np.zeros(wanted.shape, bool), np.zeros(wanted.shape, np.int64)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], wanted).clip(max=len(keys) - 1)
    return keys[order][pos] == wanted, order[pos]


def _positions(ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Id pairs as positions in ``ids``; pairs with an id not there are dropped."""
    there, at = _lookup(ids, pairs)
    return at[there.all(axis=1)].reshape(-1, 2)


def _group(
    rows: _Rows, positions: np.ndarray, vectors: dict[int, np.ndarray], reason: list[str]
) -> Group:
    """The members at ``positions`` scored against the first (most pixels, largest file)."""
    order = sorted(positions.tolist(), key=lambda p: rows.sort_key[p])
    first = order[0]
    ref = vectors.get(int(rows.ids[first]))
    members = []
    for p in order:
        same = rows.hashes[p] != "" and rows.hashes[p] == rows.hashes[first]
        vec = vectors.get(int(rows.ids[p]))
        cos = 1.0 if same or ref is None or vec is None else float(np.clip(ref @ vec, -1, 1))
        dist = None
        if rows.has_phash[p] and rows.has_phash[first]:
            dist = int(_popcount(rows.phashes[[p]] ^ rows.phashes[[first]])[0])
        kind = "first" if p == first else "exact" if same else "near"
        members.append(Member(rows.paths[p], cos, kind, dist, rows.hosts[p], int(rows.ids[p])))
    rest = sorted(members[1:], key=lambda m: (-m.score, m.path))
    return Group([members[0], *rest], reason)
