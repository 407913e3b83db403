"""Keeps cluster assignments current as images arrive and leave.

- ``after_batch``: inside the ingest transaction, one ``partial_fit`` on the new vectors and
  their assignment (cost independent of the library size), or a consolidation when the library
  has doubled since the last one (amortised, geometric).
- ``assign_batch``: the same for a writer that does not hold the cluster maintenance (a
  PostgreSQL library written by several hosts, see ``imgindex.db.locks``): nearest centre only.
- ``after_drain``: when a run or the daemon's queue drains, a consolidation if the library
  changed by more than ``REFRESH_RATIO`` (or k must be re-chosen), else, up to
  ``REASSIGN_MAX`` images, every image is re-assigned to the current centres. Beyond that a
  drain costs no more than a count: assignments made batch by batch stand until the next
  consolidation (every 10 % of change), which re-assigns everything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from imgindex import cluster
from imgindex.clusterstore import refresh_labels
from imgindex.db import Connection, images, meta
from imgindex.db.clusters import State, load_state, save_state, set_names, titles

log = logging.getLogger(__name__)

FIRST_FIT = 64  # vectors needed before clusters form during a run (a drain forms them earlier)
GROWTH_RATIO = 2.0  # consolidate during a run when the library doubles
REFRESH_RATIO = 0.1  # consolidate at a drain when the library changed by more than 10 %
SAMPLE_FIT = 50_000  # vectors used by a consolidation's batch k-means
SAMPLE_K = 5_000  # vectors used to choose k (``cluster.choose_k``)
RECHOOSE_RATIO = 0.1  # auto: re-choose k at a drain when the library changed by more than 10 %
REASSIGN_MAX = 50_000  # beyond this many images, drains leave assignments to consolidations
SEED = 0


def after_batch(
    conn: Connection, k_setting: str, dim: int, ids: np.ndarray, vectors: np.ndarray, n: int
) -> None:
    """Update the clusters with a batch of newly indexed vectors; ``n``: indexed images now
    (the caller's in-memory count: counting rows here would grow with the library)."""
    if len(ids) == 0:
        return
    state = load_state(conn)
    last = meta.consolidated_at(conn)
    if state is None:
        if n >= FIRST_FIT:
            consolidate(conn, k_setting, dim, rechoose=False)
        return
    if n >= GROWTH_RATIO * max(last, 1):
        consolidate(conn, k_setting, dim, rechoose=False)
        return
    cs = cluster.ClusterState(
        state.ids, state.centers, state.weights, state.n_steps, state.since_reassign
    )
    cs = cluster.partial_fit(cs, vectors, seed=SEED)
    labels = cluster.assign(cs.centers, vectors)
    images.set_clusters(conn, ids, cs.ids[labels])
    sizes = state.sizes + np.bincount(labels, minlength=cs.k)
    save_state(conn, State(cs.ids, cs.centers, cs.weights, sizes, cs.n_steps, cs.since_reassign))


def assign_batch(conn: Connection, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Give newly indexed vectors the cluster of their nearest centre and change nothing
    else: what a writer that does not hold the cluster maintenance does (another host runs
    ``after_batch``/``after_drain``; it corrects sizes and labels at its next drain)."""
    state = load_state(conn)
    if state is None or len(ids) == 0:
        return  # no clusters yet: the maintaining host assigns them when it forms them
    images.set_clusters(conn, ids, state.ids[cluster.assign(state.centers, vectors)])


def after_drain(
    conn: Connection, k_setting: str, dim: int, vectors: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    """Bring every assignment in line with current centres, consolidating when due.

    ``vectors``: ``(ids, matrix)`` of every indexed vector when the caller holds them in
    memory (the writer's FAISS index), which spares reading every BLOB back from SQLite."""
    n = images.count_indexed(conn)
    if vectors is not None and len(vectors[0]) != n:
        vectors = None  # not in step with the database: read SQLite
    state = load_state(conn)
    last = meta.consolidated_at(conn)
    if (
        state is None
        or _target_k(conn, k_setting, n) != len(state.ids)
        or abs(n - last) > REFRESH_RATIO * max(last, 1)
    ):
        consolidate(conn, k_setting, dim, vectors=vectors)
    elif n <= REASSIGN_MAX:
        _reassign_all(conn, state, dim, vectors)


def fixed_k(k_setting: str, n: int) -> int:
    """k for ``n`` vectors when the user chose it: capped at half the images, so a k near or
    above the library's size gives clusters of two images or more, not one image each."""
    return n if n < 2 else max(1, min(int(k_setting), n // 2))


def _due(chosen: meta.AutoK | None, n: int) -> bool:
    """Whether ``auto`` should choose k again: never chosen, or the library changed by more
    than ``RECHOOSE_RATIO`` since."""
    return chosen is None or abs(n - chosen.at) > RECHOOSE_RATIO * max(chosen.at, 1)


def _target_k(conn: Connection, k_setting: str, n: int) -> int:
    """k for ``n`` vectors: the setting (capped, see ``fixed_k``), or the last automatic
    choice (-1: due to be chosen again)."""
    if k_setting != "auto":
        return fixed_k(k_setting, n)
    chosen = meta.auto_k(conn)
    if chosen is None or _due(chosen, n):
        return -1
    return min(chosen.k, n)


def _choose_k(
    conn: Connection,
    k_setting: str,
    dim: int,
    n: int,
    rechoose: bool,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """k for a consolidation. ``auto`` searches again (``rechoose_k``) when the library
    changed by more than ``RECHOOSE_RATIO`` since the last choice, but only when ``rechoose``
    (at a drain, off the ingest path): mid-run it keeps the last choice, or a provisional
    sqrt(n/2), so a batch never pays for the search."""
    if k_setting != "auto":
        return fixed_k(k_setting, n)
    chosen = meta.auto_k(conn)
    if chosen is not None and chosen.k <= n and (not rechoose or not _due(chosen, n)):
        return chosen.k
    if not rechoose:
        return max(1, min(n, round((n / 2) ** 0.5)))
    return rechoose_k(conn, dim, n, vectors)


def rechoose_k(
    conn: Connection, dim: int, n: int, vectors: tuple[np.ndarray, np.ndarray] | None = None
) -> int:
    """Choose k on a sample of ``SAMPLE_K`` vectors (``cluster.choose_k``) and record it."""
    sample = _sample(conn, dim, n, SAMPLE_K, vectors)
    k, scores = cluster.choose_k(sample, seed=SEED)
    meta.set_auto_k(conn, meta.AutoK(k, n, scores, len(sample)))
    log.info("chose k=%d by centroid silhouette on %d vectors", k, len(sample))
    return k


@dataclass(frozen=True)
class KChoice:
    """The silhouette score of each candidate k, as the clustering chooses k by it."""

    scores: dict[int, float]
    best: int | None  # the k with the best score (None: too few images to compare)
    images: int  # indexed images when it was scored
    sample: int | None  # vectors scored (None: not recorded by earlier versions)
    stored: bool  # the scores k was chosen by (auto); False: scored now, k is not chosen by them


def k_choice(conn: Connection, k_setting: str, dim: int) -> KChoice:
    """The scores the last automatic choice of k was made with, as stored when it was made;
    when k is set by the user (or not chosen yet) the same search run now, read-only."""
    chosen = meta.auto_k(conn)
    if k_setting == "auto" and chosen is not None and chosen.silhouette:
        return KChoice(chosen.silhouette, chosen.k, chosen.at, chosen.sample, True)
    n = images.count_indexed(conn)
    sample = _sample(conn, dim, n, SAMPLE_K)
    best, scores = cluster.choose_k(sample, seed=SEED) if len(sample) >= 3 else (0, {})
    return KChoice(scores, best if scores else None, n, len(sample), False)


def _sample(
    conn: Connection,
    dim: int,
    n: int,
    size: int,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    rng = np.random.default_rng(SEED + n)
    if vectors is not None:
        x = vectors[1]
        return np.array(x if len(x) <= size else x[np.sort(rng.choice(len(x), size, False))])
    if n <= size:
        return np.concatenate(
            [v for _, v, _ in images.iter_vectors(conn, dim)] or [np.empty((0, dim), np.float32)]
        )
    pick = rng.choice(images.indexed_ids(conn), size=size, replace=False)
    return images.vectors_for(conn, pick.tolist(), dim)[1]


def _chunks(
    conn: Connection, dim: int, vectors: tuple[np.ndarray, np.ndarray] | None, size: int = 50_000
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every indexed ``(ids, vectors, cluster ids)``, from memory when given, else SQLite."""
    if vectors is None:
        yield from images.iter_vectors(conn, dim)
        return
    ids, x = vectors
    current = images.cluster_assignments(conn)
    for start in range(0, len(ids), size):
        part = ids[start : start + size]
        cids = np.fromiter((current.get(int(i), -1) for i in part), np.int64, len(part))
        yield part, x[start : start + size], cids


def consolidate(
    conn: Connection,
    k_setting: str,
    dim: int,
    rechoose: bool = True,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Full k-means++ over (a sample of) the library; ids follow their images."""
    n = images.count_indexed(conn)
    if n == 0:
        empty = np.empty(0)
        save_state(conn, State(np.empty(0, np.int64), np.empty((0, dim), np.float32), empty, empty))
        images.clear_clusters(conn)
        meta.set_groups(conn, replace(meta.groups(conn), of={}, titles={}))
        return
    k = max(1, _choose_k(conn, k_setting, dim, n, rechoose, vectors))
    centers = cluster.fit_full(_sample(conn, dim, n, SAMPLE_FIT, vectors), k, seed=SEED)
    all_ids, positions, old = [], [], []
    for ids, vecs, cids in _chunks(conn, dim, vectors):
        all_ids.append(ids)
        positions.append(cluster.assign(centers, vecs))
        old.append(cids)
    ids, pos, old_ids = map(np.concatenate, (all_ids, positions, old))
    used = np.flatnonzero(np.bincount(pos, minlength=k))  # fewer distinct images than k
    centers, pos = centers[used], np.searchsorted(used, pos)
    k = len(used)
    new_ids = _stable_ids(conn, pos, old_ids, k)
    sizes = np.bincount(pos, minlength=k)
    _regroup(conn, centers, sizes, new_ids, pos, old_ids)
    images.set_clusters(conn, ids, new_ids[pos])
    state = load_state(conn)
    n_steps = state.n_steps if state else 0
    save_state(conn, State(new_ids, centers, sizes.astype(np.float32), sizes, n_steps, 0))
    meta.set_consolidated_at(conn, n)
    refresh_labels(conn)
    log.info("consolidated %d images into %d clusters", n, k)


def _stable_ids(conn: Connection, pos: np.ndarray, old_ids: np.ndarray, k: int) -> np.ndarray:
    """Ids (and users' names) that follow the images (``cluster.match_ids``,
    ``cluster.carry_names``)."""
    known = old_ids >= 0
    previous = np.unique(old_ids[known])
    next_id = meta.next_cluster_id(conn)
    overlap = np.zeros((len(previous), k), dtype=np.int64)
    if len(previous):
        np.add.at(overlap, (np.searchsorted(previous, old_ids[known]), pos[known]), 1)
    new_ids = cluster.match_ids(overlap, previous, next_id)
    meta.set_next_cluster_id(conn, max(next_id, int(new_ids.max()) + 1))
    names = {cid: t["name"] for cid, t in titles(conn).items() if t["name"]}
    if names:
        set_names(conn, cluster.carry_names(overlap, previous, new_ids, names))
    return new_ids


def _regroup(
    conn: Connection,
    centers: np.ndarray,
    sizes: np.ndarray,
    new_ids: np.ndarray,
    pos: np.ndarray,
    old_ids: np.ndarray,
) -> None:
    """Group the new clusters (``cluster.group_clusters``); group ids and names follow the
    images like clusters' do. ``pos``: each image's new cluster (row), ``old_ids``: its
    cluster id before (-1: none)."""
    before = meta.groups(conn)
    groups = cluster.group_clusters(centers, sizes, seed=SEED)
    if groups is None:
        meta.set_groups(conn, replace(before, of={}, titles={}))
        return
    old_group = np.array([before.of.get(int(c), -1) for c in old_ids], dtype=np.int64)
    known = old_group >= 0
    previous = np.unique(old_group[known])
    g = int(groups.max()) + 1
    overlap = np.zeros((len(previous), g), dtype=np.int64)
    if len(previous):
        np.add.at(overlap, (np.searchsorted(previous, old_group[known]), groups[pos[known]]), 1)
    gids = cluster.match_ids(overlap, previous, before.next_id)
    names = {gid: name for gid, t in before.titles.items() if (name := t.get("name"))}
    kept = cluster.carry_names(overlap, previous, gids, names) if names else {}
    meta.set_groups(
        conn,
        meta.Groups(
            {int(c): int(gids[j]) for c, j in zip(new_ids, groups, strict=True)},
            {int(gid): {"label": None, "name": kept.get(int(gid))} for gid in gids},
            max(before.next_id, int(gids.max()) + 1),
        ),
    )


def _reassign_all(
    conn: Connection, state: State, dim: int, vectors: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    centers, cids = state.centers, state.ids
    sizes = np.zeros(len(cids), dtype=np.int64)
    for ids, vecs, _ in _chunks(conn, dim, vectors):
        labels = cluster.assign(centers, vecs)
        images.set_clusters(conn, ids, cids[labels])
        sizes += np.bincount(labels, minlength=len(cids))
    save_state(conn, replace(state, sizes=sizes))
    refresh_labels(conn)
