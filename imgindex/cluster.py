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
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

#: ``auto`` considers k up to the sample's size over this (clusters of ~8 vectors or more).
AUTO_MIN_SIZE = 8
#: Candidates grow geometrically past 10 by this ratio, so their number grows with log(n).
AUTO_STEP = 1.1
#: The search stops once this many candidates in a row score below the best so far, past
#: twice the best k and past ``AUTO_MIN_SEARCH`` (scores dip after k = 2 before they climb).
AUTO_PATIENCE = 6
AUTO_MIN_SEARCH = 30
#: k-means++ runs per candidate (the best inertia is scored); one past ``AUTO_INITS_UP_TO``,
#: where the search's cost is (many clusters of a big sample average the noise out).
AUTO_INITS = 3
AUTO_INITS_UP_TO = 50
#: Of the candidates scoring within this share of the best, the largest k is chosen: k-means++
#: seeding follows the rows' order, so neighbouring k score closer than that noise, and merging
#: two real groups costs a browser (and NMI) more than splitting one. 3 % left two of fourteen
#: folder-by-folder runs of caltech-dev at -0.04 and -0.06 NMI from the best fixed k; 5 % keeps
#: all fourteen within 0.03 (bench/README.md, "Choosing k").
AUTO_TOLERANCE = 0.05


#: Groups of clusters (the second level) form from this many clusters on, between
#: ``GROUPS_MIN`` and ``GROUPS_MAX`` of them (fewer when there are too few clusters).
GROUP_FROM = 16
GROUPS_MIN, GROUPS_MAX = 8, 40


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


def auto_candidates(n: int) -> list[int]:
    """Candidate k for ``n`` vectors: 2..10, then geometric steps of ``AUTO_STEP`` up to
    ``n // AUTO_MIN_SIZE``; no fixed cap, the list grows with the library. A small library
    may have clusters of 3 (up to k = 10)."""
    top = max(n // AUTO_MIN_SIZE, min(n // 3, 10))
    out = list(range(2, min(top, 10) + 1))
    k = 10.0
    while True:
        k *= AUTO_STEP
        if round(k) > top:
            return out
        if round(k) > out[-1]:
            out.append(round(k))


def centroid_silhouette(sample: np.ndarray, centers: np.ndarray) -> float:
    """Mean simplified silhouette on cosine geometry: for each vector, ``(b - a) / max(a, b)``
    with ``a`` its cosine distance to its nearest centre and ``b`` to the second nearest.
    Costs one assignment pass (O(n k d)), not the O(n^2 d) of the pairwise silhouette."""
    if len(centers) < 2:
        return -1.0
    unit = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    x = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    top2 = -np.partition(-(x @ unit.T), 1, axis=1)[:, :2]
    a, b = 1.0 - top2[:, 0], 1.0 - top2[:, 1]
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))


def choose_k(
    sample: np.ndarray, seed: int = 0, candidates: list[int] | None = None
) -> tuple[int, dict[int, float]]:
    """k by the centroid silhouette (cosine) of a k-means++ fit (best of ``AUTO_INITS``) over
    ``auto_candidates``: the largest k scoring within ``AUTO_TOLERANCE`` of the best; the
    search stops ``AUTO_PATIENCE`` candidates past the best (see ``AUTO_MIN_SEARCH``).
    Chosen by ``bench/autok.py`` against the other criteria; returns every score."""
    n = len(sample)
    candidates = [k for k in (candidates or auto_candidates(n)) if 2 <= k < n]
    if not candidates:
        return (1 if n < 2 else 2), {}
    x = np.ascontiguousarray(sample, dtype=np.float32)
    scores: dict[int, float] = {}
    best, behind = candidates[0], 0
    for k in candidates:
        inits = AUTO_INITS if k <= AUTO_INITS_UP_TO else 1
        scores[k] = centroid_silhouette(x, fit_full(x, k, seed=seed, n_init=inits))
        if scores[k] > scores[best]:
            best, behind = k, 0
        else:
            behind += 1
            if behind >= AUTO_PATIENCE and k >= max(2 * best, AUTO_MIN_SEARCH):
                break
    floor = scores[best] - AUTO_TOLERANCE * abs(scores[best])
    return max(k for k, v in scores.items() if v >= floor), scores


def destinations(overlap: np.ndarray) -> np.ndarray:
    """For each old cluster (row of ``overlap``), the new cluster that got most of its images
    (-1: none of them is left)."""
    if overlap.size == 0:
        return np.full(overlap.shape[0], -1, dtype=np.int64)
    return np.where(overlap.max(axis=1) > 0, overlap.argmax(axis=1), -1)


def match_ids(overlap: np.ndarray, old_ids: np.ndarray, next_id: int) -> np.ndarray:
    """Stable ids for new clusters, following the images: each old cluster goes where most of
    its images went (``destinations``); a new cluster that is the destination of old clusters
    keeps the oldest (smallest) id among them, so a split keeps the id on the part that got
    most of the images and a merge keeps the older id. Other new clusters get fresh ids
    from ``next_id`` on.

    ``overlap[i, j]`` counts images that were in old cluster ``old_ids[i]`` and are now in new
    cluster ``j``.
    """
    k_new = overlap.shape[1]
    ids = np.full(k_new, -1, dtype=np.int64)
    for i, j in enumerate(destinations(overlap)):
        if j >= 0 and (ids[j] < 0 or old_ids[i] < ids[j]):
            ids[j] = old_ids[i]
    for j in np.flatnonzero(ids < 0):
        ids[j] = next_id
        next_id += 1
    return ids


def carry_names(
    overlap: np.ndarray, old_ids: np.ndarray, new_ids: np.ndarray, names: dict[int, str]
) -> dict[int, str]:
    """Users' names after a re-clustering, ``{new id: name}``: a named cluster's name goes
    where most of its images went; when several named clusters went to one new cluster, the
    name of the one that brought it most images stays."""
    out: dict[int, tuple[int, str]] = {}
    for i, j in enumerate(destinations(overlap)):
        name = names.get(int(old_ids[i]))
        if name is None or j < 0:
            continue
        brought = int(overlap[i, j])
        new = int(new_ids[j])
        if new not in out or brought > out[new][0]:
            out[new] = (brought, name)
    return {cid: name for cid, (_, name) in out.items()}


def group_clusters(centers: np.ndarray, sizes: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """The group (0..g-1) of each cluster: g chosen by ``choose_k`` on the centres between
    ``GROUPS_MIN`` and ``GROUPS_MAX`` (at most half the clusters), then a k-means of the
    centres weighted by their sizes. None below ``GROUP_FROM`` clusters: no second level."""
    k = len(centers)
    if k < GROUP_FROM:
        return None
    top = min(GROUPS_MAX, k // 2)
    g, _ = choose_k(centers, seed, list(range(min(GROUPS_MIN, top), top + 1)))
    km = KMeans(n_clusters=g, init="k-means++", n_init=AUTO_INITS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(np.ascontiguousarray(centers, dtype=np.float32), sample_weight=sizes)
    return np.asarray(km.labels_, dtype=np.int64)
