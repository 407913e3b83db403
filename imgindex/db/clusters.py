"""The ``clusters`` and ``cluster_labels`` tables: the persisted k-means state (one row per
cluster, rewritten at every batch), and each cluster's label and the name a user gave it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, select

from imgindex.db import meta
from imgindex.db.dialect import upsert
from imgindex.db.images import blob_to_vector, vector_to_blob
from imgindex.db.schema import STATUS_INDEXED, cluster_labels, clusters, images


@dataclass
class State:
    """The stored clusters; row ``i`` of ``centers`` is cluster ``ids[i]``."""

    ids: np.ndarray  # (k,) int64, stable user-visible ids
    centers: np.ndarray  # (k, d) float32
    weights: np.ndarray  # (k,) float32, MiniBatchKMeans' per-centre counts
    sizes: np.ndarray  # (k,) int64, members assigned now
    n_steps: int = 0
    since_reassign: int = 0


def load_state(conn: Connection) -> State | None:
    """The stored clusters, or None when there are none."""
    rows = conn.execute(select(clusters).order_by(clusters.c.position)).all()
    if not rows:
        return None
    n_steps, since_reassign = meta.cluster_steps(conn)
    return State(
        ids=np.array([r.id for r in rows], dtype=np.int64),
        centers=np.stack([blob_to_vector(r.centroid) for r in rows]).astype(np.float32),
        weights=np.array([r.weight for r in rows], dtype=np.float32),
        sizes=np.array([r.size for r in rows], dtype=np.int64),
        n_steps=n_steps,
        since_reassign=since_reassign,
    )


def save_state(conn: Connection, state: State) -> None:
    """Replace the stored clusters with these."""
    conn.execute(delete(clusters))
    if len(state.ids):
        parts = zip(state.ids, state.centers, state.weights, state.sizes, strict=True)
        conn.execute(
            clusters.insert(),
            [
                {
                    "id": int(i),
                    "position": pos,
                    "centroid": vector_to_blob(c),
                    "weight": float(w),
                    "size": int(s),
                }
                for pos, (i, c, w, s) in enumerate(parts)
            ],
        )
    meta.set_cluster_steps(conn, state.n_steps, state.since_reassign)


def forget(conn: Connection) -> None:
    """Drop the clusters and what consolidating builds on (the library changes model); users'
    names stay with their ids."""
    conn.execute(delete(clusters))
    meta.forget_clustering(conn)


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(clusters)).scalar() or 0)


def ids(conn: Connection) -> list[int]:
    """Every cluster's id, ascending."""
    return list(conn.execute(select(clusters.c.id).order_by(clusters.c.id)).scalars())


def find(conn: Connection, cluster_id: int) -> Any:
    """The cluster's row ``(id, position, centroid, weight, size)``, or None."""
    return conn.execute(select(clusters).where(clusters.c.id == cluster_id)).first()


def all_clusters(conn: Connection) -> list[Any]:
    """Every cluster's row, by id."""
    return list(conn.execute(select(clusters).order_by(clusters.c.id)).all())


def members(conn: Connection, cluster_id: int, limit: int | None = None) -> list[Any]:
    """``(id, host, path, vector)`` of the (first ``limit``) indexed members of a cluster, of
    every host, by id."""
    q = (
        select(images.c.id, images.c.host, images.c.path, images.c.vector)
        .where(images.c.cluster_id == cluster_id, images.c.status == STATUS_INDEXED)
        .order_by(images.c.id)
    )
    return list(conn.execute(q.limit(limit) if limit else q).all())


def member_page(conn: Connection, cluster_id: int, offset: int, limit: int) -> list[Any]:
    """``(id, host, path)`` of one page of a cluster's indexed members, by id (no vectors
    read: a page of a huge cluster costs what the page holds)."""
    q = (
        select(images.c.id, images.c.host, images.c.path)
        .where(images.c.cluster_id == cluster_id, images.c.status == STATUS_INDEXED)
        .order_by(images.c.id)
    )
    return list(conn.execute(q.offset(offset).limit(limit)).all())


def label_counts(conn: Connection) -> list[tuple[int, int, int]]:
    """``(cluster id, ImageNet class, members with it)`` over the indexed images."""
    q = (
        select(images.c.cluster_id, images.c.label, func.count())
        .where(
            images.c.status == STATUS_INDEXED,
            images.c.cluster_id.is_not(None),
            images.c.label.is_not(None),
        )
        .group_by(images.c.cluster_id, images.c.label)
    )
    return [(cid, label, n) for cid, label, n in conn.execute(q)]


# --- labels and names -------------------------------------------------------------------------


def set_labels(conn: Connection, labels: dict[int, str | None]) -> None:
    """Each cluster's label; clusters not in ``labels`` lose their label and name."""
    conn.execute(delete(cluster_labels).where(cluster_labels.c.cluster_id.not_in(list(labels))))
    rows = [{"cluster_id": cid, "label": label} for cid, label in labels.items()]
    upsert(conn, cluster_labels, rows, key="cluster_id", update=["label"])


def set_name(conn: Connection, cluster_id: int, name: str | None) -> None:
    """The user's name for a cluster (None: none)."""
    rows = [{"cluster_id": cluster_id, "name": name}]
    upsert(conn, cluster_labels, rows, key="cluster_id", update=["name"])


def set_names(conn: Connection, names: dict[int, str]) -> None:
    """Replace every user's name with ``names`` (``{cluster id: name}``)."""
    conn.execute(cluster_labels.update().values(name=None))
    rows = [{"cluster_id": cid, "name": name} for cid, name in names.items()]
    if rows:
        upsert(conn, cluster_labels, rows, key="cluster_id", update=["name"])


def titles(conn: Connection) -> dict[int, dict[str, str | None]]:
    """``{cluster id: {"label", "name"}}`` for every cluster that has either."""
    rows = conn.execute(select(cluster_labels)).all()
    return {r.cluster_id: {"label": r.label, "name": r.name} for r in rows}
