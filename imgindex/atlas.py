"""The library's 2-D map: t-SNE of the image vectors, as the tutorials draw it.

Up to ``TSNE_MAX`` indexed images are laid out by t-SNE directly (PCA to 50 dimensions first).
Beyond that, t-SNE lays out a random sample of ``TSNE_MAX`` and every other image is placed at
the inverse-distance-weighted mean of its ``NEIGHBOURS`` nearest sampled images (in the PCA
space), which keeps a 100k library to about the cost of a 5k one. The result is cached in the
data directory (``map.npz``), keyed by the set of indexed ids and the changes-log position (moves
and re-clustering keep it), so ``export`` and ``report`` agree and a second run is instant.
Coordinates are scaled to [0, 1] (same scale on both axes).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgindex import fsafe
from imgindex.db import changes, images

log = logging.getLogger(__name__)

MAP_NAME = "map.npz"
TSNE_MAX = 5_000  # t-SNE itself lays out at most this many (2 cores: 1k 8 s, 5k 20 s, 10k 35 s)
PCA_DIMS = 50
NEIGHBOURS = 3
SEED = 0
VERSION = 1  # bump when the layout changes, to invalidate cached maps


@dataclass(frozen=True)
class Atlas:
    """Map coordinates of the indexed images: row ``i`` of ``xy`` is image ``ids[i]``."""

    ids: np.ndarray  # (n,) int64, ascending
    xy: np.ndarray  # (n, 2) float32 in [0, 1]
    method: str  # "tsne", "tsne+neighbours", "pca" (fewer than 5 points) or "empty"
    sampled: int  # how many points t-SNE itself laid out
    cached: bool = False

    def lookup(self) -> dict[int, tuple[float, float]]:
        """``{image id: (x, y)}``."""
        return {int(i): (float(x), float(y)) for i, (x, y) in zip(self.ids, self.xy, strict=True)}


def layout(vectors: np.ndarray, seed: int = SEED) -> np.ndarray:
    """t-SNE (after PCA to 50-d) of ``vectors``; PCA-2D for fewer than 5 points."""
    from sklearn.decomposition import PCA

    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    reduced = PCA(min(PCA_DIMS, n, vectors.shape[1]), random_state=seed).fit_transform(vectors)
    if n < 5:
        return _pad2(reduced[:, :2])
    return _tsne(reduced, seed)


def _tsne(reduced: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(reduced) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with warnings.catch_warnings():  # duplicate vectors (copies of a photo) are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return tsne.fit_transform(np.ascontiguousarray(reduced, dtype=np.float32))


def _pad2(xy: np.ndarray) -> np.ndarray:
    out = np.zeros((len(xy), 2), dtype=np.float32)
    out[:, : xy.shape[1]] = xy
    return out


def place_by_neighbours(
    sample: np.ndarray, sample_xy: np.ndarray, others: np.ndarray, k: int = NEIGHBOURS
) -> np.ndarray:
    """Coordinates for ``others``: the inverse-distance-weighted mean of the map positions of
    their ``k`` nearest rows of ``sample`` (Euclidean, in chunks)."""
    k = min(k, len(sample))
    sq = np.einsum("ij,ij->i", sample, sample)
    out = np.empty((len(others), 2), dtype=np.float32)
    for start in range(0, len(others), 4096):
        part = others[start : start + 4096]
        d2 = sq[None, :] - 2.0 * (part @ sample.T) + np.einsum("ij,ij->i", part, part)[:, None]
        top = np.argpartition(d2, k - 1, axis=1)[:, :k]
        w = 1.0 / (np.sqrt(np.maximum(np.take_along_axis(d2, top, axis=1), 0.0)) + 1e-6)
        w /= w.sum(axis=1, keepdims=True)
        out[start : start + 4096] = np.einsum("nk,nkd->nd", w, sample_xy[top])
    return out


def normalise(xy: np.ndarray) -> np.ndarray:
    """Shift and scale to [0, 1], the same factor on both axes (the shape is kept)."""
    if len(xy) == 0:
        return xy.astype(np.float32)
    xy = xy - xy.min(axis=0)
    span = float(xy.max()) or 1.0
    return (xy / span).astype(np.float32)


def compute(conn: Any, dim: int, ids: np.ndarray, tsne_max: int = TSNE_MAX) -> Atlas:
    """The map of the indexed images ``ids`` (ascending), read from SQLite in chunks; images
    that stopped being indexed meanwhile are left out."""
    from sklearn.decomposition import PCA

    if len(ids) <= tsne_max:
        got, vectors = images.vectors_for(conn, ids.tolist(), dim)
        n = len(got)
        method = "empty" if n == 0 else "pca" if n < 5 else "tsne"
        return Atlas(got, normalise(layout(vectors)), method, n)
    rng = np.random.default_rng(SEED)
    sample_ids = np.sort(rng.choice(ids, size=tsne_max, replace=False))
    pca = PCA(min(PCA_DIMS, tsne_max, dim), random_state=SEED)
    pca.fit(images.vectors_for(conn, sample_ids.tolist(), dim)[1])
    id_parts, parts = [], []
    for chunk_ids, vecs, _ in images.iter_vectors(conn, dim):
        keep = np.isin(chunk_ids, ids)
        id_parts.append(chunk_ids[keep])
        parts.append(pca.transform(vecs[keep]).astype(np.float32))
    all_ids, reduced = np.concatenate(id_parts), np.concatenate(parts)
    in_sample = np.isin(all_ids, sample_ids)
    xy = np.empty((len(all_ids), 2), dtype=np.float32)
    xy[in_sample] = _tsne(reduced[in_sample], SEED)
    xy[~in_sample] = place_by_neighbours(reduced[in_sample], xy[in_sample], reduced[~in_sample])
    return Atlas(all_ids, normalise(xy), "tsne+neighbours", int(in_sample.sum()))


def cache_key(conn: Any, model: str, ids: np.ndarray, tsne_max: int) -> str:
    """What a cached map must match: the indexed ids, the changes-log head, model, settings."""
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()
    head = changes.log_head(conn).seq  # its xmin moves with any other transaction
    return f"v{VERSION}:{model}:{len(ids)}:{digest[:24]}:{head}:{tsne_max}:{SEED}"


def library_map(lib: Any, tsne_max: int = TSNE_MAX) -> Atlas:
    """The map of an open library, from the cache when it is current, else computed (and
    cached, unless the library was opened read-only: a reader never writes its folder)."""
    path = Path(lib.paths.root) / MAP_NAME
    with lib.engine.connect() as conn:
        ids = images.indexed_ids(conn)
        key = cache_key(conn, lib.model, ids, tsne_max)
        cached = _load(path, key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        atlas = compute(conn, lib.dim, ids, tsne_max)
    log.info(
        "map of %d images (%s) in %.1f s", len(ids), atlas.method, time.perf_counter() - started
    )
    if lib.read_only:  # a data directory we may not write: nothing is cached
        log.debug("map not cached: %s is read-only here", lib.paths.root)
    else:
        _save(path, key, atlas)
    return atlas


def _load(path: Path, key: str) -> Atlas | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return Atlas(
                data["ids"], data["xy"], str(data["method"]), int(data["sampled"]), cached=True
            )
    except (OSError, KeyError, ValueError):  # absent, unreadable or from another version
        return None


def _save(path: Path, key: str, atlas: Atlas) -> None:
    def fill(fh: Any) -> None:
        np.savez(
            fh, key=key, ids=atlas.ids, xy=atlas.xy, method=atlas.method, sampled=atlas.sampled
        )

    try:
        fsafe.atomic_write(path, fill)
    except OSError as exc:
        log.warning("map not cached in %s: %s", path, exc)
