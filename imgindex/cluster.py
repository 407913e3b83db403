"""Incremental k-means for photo libraries that arrive folder by folder.

Each batch updates a ``MiniBatchKMeans`` with ``partial_fit``; its state (centres, per-centre
counts, step counters) lives in plain arrays so it can be stored in SQLite, not pickled. Because
folder-ordered batches drag the centres towards whatever folder came last, the model is
*consolidated* from time to time: a full k-means++ ``KMeans`` over (a sample of) every vector,
after which clusters keep their id when they hold mostly the same images as before.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

#: Candidate k for ``auto``; those above a third of the sample are skipped.
AUTO_K_CANDIDATES = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 64)


@dataclass
class ClusterState:
    """What resuming ``partial_fit`` needs; row ``i`` of ``centers`` is cluster ``ids[i]``."""

    ids: np.ndarray  # (k,) int64, stable user-visible ids
    centers: np.ndarray  # (k, d) float32
    weights: np.ndarray  # (k,) float32, MiniBatchKMeans' per-centre counts
    n_steps: int = 0
    since_reassign: int = 0

    @property
    def k(self) -> int:
        return len(self.ids)


def assign(centers: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean, as k-means uses) for every row."""
    if len(vectors) == 0:
        return np.empty(0, dtype=np.int64)
    sq = np.einsum("ij,ij->i", centers, centers)
    return np.argmin(sq[None, :] - 2.0 * (vectors @ centers.T), axis=1)


def partial_fit(
    state: ClusterState, batch: np.ndarray, seed: int = 0, batch_size: int = 256
) -> ClusterState:
    """One ``MiniBatchKMeans.partial_fit`` step resumed from ``state``; returns the new state."""
    km = MiniBatchKMeans(
        n_clusters=state.k,
        init=state.centers,
        n_init=1,
        batch_size=batch_size,
        compute_labels=False,
    )
    km.cluster_centers_ = np.array(state.centers, dtype=np.float32)
    km._counts = np.array(state.weights, dtype=np.float32)
    km._n_since_last_reassign = state.since_reassign
    km._batch_size = min(batch_size, len(batch))
    km._n_threads = _openmp_effective_n_threads()
    km._random_state = np.random.RandomState(seed + state.n_steps)
    km.n_steps_ = state.n_steps
    km.n_features_in_ = state.centers.shape[1]
    km.partial_fit(np.ascontiguousarray(batch, dtype=np.float32))
    return ClusterState(
        state.ids.copy(),
        km.cluster_centers_.astype(np.float32),
        km._counts.astype(np.float32),
        km.n_steps_,
        km._n_since_last_reassign,
    )


def fit_full(sample: np.ndarray, k: int, seed: int = 0, n_init: int = 3) -> np.ndarray:
    """Centres of a batch k-means++ run over ``sample``."""
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    with warnings.catch_warnings():  # fewer distinct points than k: empty clusters dropped later
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(np.ascontiguousarray(sample, dtype=np.float32))
    return km.cluster_centers_.astype(np.float32)


def choose_k(sample: np.ndarray, seed: int = 0) -> tuple[int, dict[int, float]]:
    """k with the best silhouette on ``sample`` (as the tutorials pick it), and every score."""
    n = len(sample)
    candidates = [k for k in AUTO_K_CANDIDATES if k <= max(2, n // 3) and k < n]
    if not candidates:
        return (1 if n < 2 else 2), {}
    scores: dict[int, float] = {}
    for k in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(sample)
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = float(silhouette_score(sample, labels, metric="euclidean"))
    if not scores:
        return candidates[0], {}
    return max(scores, key=lambda k: scores[k]), scores


def match_ids(
    overlap: np.ndarray, old_ids: np.ndarray, new_sizes: np.ndarray, next_id: int
) -> np.ndarray:
    """Stable ids for new clusters: new cluster ``j`` inherits old id ``old_ids[i]`` when the
    best one-to-one matching (Hungarian, on shared members) pairs them and most of ``j``'s
    members came from ``i``; otherwise it gets a fresh id starting at ``next_id``.

    ``overlap[i, j]`` counts images that were in old cluster ``i`` and are now in new ``j``.
    """
    k_new = overlap.shape[1]
    ids = np.full(k_new, -1, dtype=np.int64)
    if overlap.size:
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        for i, j in zip(rows, cols, strict=True):
            if overlap[i, j] > 0 and 2 * overlap[i, j] > new_sizes[j]:
                ids[j] = old_ids[i]
    for j in np.flatnonzero(ids < 0):
        ids[j] = next_id
        next_id += 1
    return ids
