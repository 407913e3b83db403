"""Clusters in SQLite: the persisted k-means state and the read side of ``imgindex clusters``.

Torch- and scikit-learn-free, so listing clusters is fast.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, select

from imgindex import store
from imgindex.errors import NotInLibrary
from imgindex.schema import STATUS_INDEXED, clusters, images


def load_state(conn: Connection) -> dict[str, Any] | None:
    """``{"ids", "centers", "weights", "sizes", "n_steps", "since_reassign"}`` or None."""
    rows = conn.execute(select(clusters).order_by(clusters.c.position)).all()
    if not rows:
        return None
    centers = np.stack([store.blob_to_vector(r.centroid) for r in rows]).astype(np.float32)
    return {
        "ids": np.array([r.id for r in rows], dtype=np.int64),
        "centers": centers,
        "weights": np.array([r.weight for r in rows], dtype=np.float32),
        "sizes": np.array([r.size for r in rows], dtype=np.int64),
        "n_steps": int(store.get_meta(conn, "cluster_n_steps", "0") or 0),
        "since_reassign": int(store.get_meta(conn, "cluster_since_reassign", "0") or 0),
    }


def save_state(
    conn: Connection,
    ids: np.ndarray,
    centers: np.ndarray,
    weights: np.ndarray,
    sizes: np.ndarray,
    n_steps: int,
    since_reassign: int,
) -> None:
    """Replace the stored clusters with these."""
    conn.execute(delete(clusters))
    if len(ids):
        conn.execute(
            clusters.insert(),
            [
                {
                    "id": int(i),
                    "position": pos,
                    "centroid": store.vector_to_blob(c),
                    "weight": float(w),
                    "size": int(s),
                }
                for pos, (i, c, w, s) in enumerate(zip(ids, centers, weights, sizes, strict=True))
            ],
        )
    store.set_meta(conn, "cluster_n_steps", n_steps)
    store.set_meta(conn, "cluster_since_reassign", since_reassign)


def set_meta_json(conn: Connection, key: str, value: Any) -> None:
    store.set_meta(conn, key, json.dumps(value))


def get_meta_json(conn: Connection, key: str, default: Any = None) -> Any:
    raw = store.get_meta(conn, key)
    return default if raw is None else json.loads(raw)


def _members(
    conn: Connection, cluster_id: int, dim: int, limit: int | None = None
) -> tuple[list[str], np.ndarray]:
    q = (
        select(images.c.path, images.c.vector)
        .where(images.c.cluster_id == cluster_id, images.c.status == STATUS_INDEXED)
        .order_by(images.c.id)
    )
    if limit:
        q = q.limit(limit)
    rows = conn.execute(q).all()
    vecs = np.stack([store.blob_to_vector(r.vector) for r in rows]) if rows else np.empty((0, dim))
    return [r.path for r in rows], vecs


def _nearest_first(paths: list[str], vecs: np.ndarray, centroid: np.ndarray) -> list[dict]:
    if not paths:
        return []
    dist = np.linalg.norm(vecs - centroid[None, :], axis=1)
    return [{"path": paths[i], "distance": round(float(dist[i]), 4)} for i in np.argsort(dist)]


def list_clusters(
    conn: Connection, dim: int, representatives: int = 3, scan_limit: int = 2000
) -> list[dict[str, Any]]:
    """Every cluster with its size and the members nearest its centre (of the first
    ``scan_limit`` members, which keeps listing fast on huge clusters)."""
    out = []
    for row in conn.execute(select(clusters).order_by(clusters.c.id)).all():
        centroid = store.blob_to_vector(row.centroid)
        paths, vecs = _members(conn, row.id, dim, limit=scan_limit)
        reps = _nearest_first(paths, vecs, centroid)[:representatives]
        out.append({"id": row.id, "size": row.size, "representatives": [r["path"] for r in reps]})
    return out


def show_cluster(conn: Connection, cluster_id: int, dim: int) -> dict[str, Any]:
    """All members of a cluster, nearest to its centre first."""
    row = conn.execute(select(clusters).where(clusters.c.id == cluster_id)).first()
    if row is None:
        known = conn.execute(select(clusters.c.id).order_by(clusters.c.id)).scalars().all()
        raise NotInLibrary(
            f"no cluster {cluster_id}; existing clusters: "
            f"{', '.join(map(str, known)) or 'none yet (run `imgindex index`)'}"
        )
    paths, vecs = _members(conn, cluster_id, dim)
    return {
        "id": cluster_id,
        "size": len(paths),
        "members": _nearest_first(paths, vecs, store.blob_to_vector(row.centroid)),
    }
