"""Clusters in SQLite: the persisted k-means state and the read side of ``imgindex clusters``.

Torch- and scikit-learn-free, so listing clusters is fast.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from imgindex import store
from imgindex.errors import ImgIndexError, NotInLibrary
from imgindex.schema import STATUS_INDEXED, cluster_labels, clusters, images

LABEL_SHARE = 0.2  # a second class joins the label when this share of the members has it


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


# --- labels and names -----------------------------------------------------------------------


def refresh_labels(conn: Connection) -> None:
    """Label every cluster by its members' most frequent ImageNet top-1 classes (e.g. "tabby ·
    tiger cat"); users' names stay, following their cluster ids. Clusters gone lose both."""
    from imgindex.models import imagenet_label

    q = (
        select(images.c.cluster_id, images.c.label, func.count())
        .where(
            images.c.status == STATUS_INDEXED,
            images.c.cluster_id.is_not(None),
            images.c.label.is_not(None),
        )
        .group_by(images.c.cluster_id, images.c.label)
    )
    counts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for cid, label, n in conn.execute(q):
        counts[cid].append((n, label))
    ids = conn.execute(select(clusters.c.id)).scalars().all()
    conn.execute(delete(cluster_labels).where(cluster_labels.c.cluster_id.not_in(ids)))
    for cid in ids:
        top = sorted(counts.get(cid, []), reverse=True)
        total = sum(n for n, _ in top)
        names = [
            imagenet_label(c)
            for i, (n, c) in enumerate(top[:2])
            if not i or n >= LABEL_SHARE * total
        ]
        stmt = sqlite_insert(cluster_labels).values(cluster_id=cid, label=" · ".join(names) or None)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["cluster_id"], set_={"label": stmt.excluded.label}
            )
        )


def name_cluster(conn: Connection, cluster_id: int, name: str | None) -> None:
    """Give a cluster a name of the user's own (None: back to its label)."""
    _require(conn, cluster_id)
    if name is not None and not name.strip():
        raise ImgIndexError("a cluster name cannot be empty; use --clear to remove one")
    stmt = sqlite_insert(cluster_labels).values(cluster_id=cluster_id, name=name)
    conn.execute(stmt.on_conflict_do_update(index_elements=["cluster_id"], set_={"name": name}))


def titles(conn: Connection) -> dict[int, dict[str, str | None]]:
    """``{cluster id: {"label", "name"}}`` for every cluster that has either."""
    rows = conn.execute(select(cluster_labels)).all()
    return {r.cluster_id: {"label": r.label, "name": r.name} for r in rows}


def display_name(cluster_id: int, title: dict[str, str | None] | None) -> str:
    """What a person should read for a cluster: its name, else its label, else its number."""
    title = title or {}
    return title.get("name") or title.get("label") or f"cluster {cluster_id}"


def _require(conn: Connection, cluster_id: int) -> Any:
    row = conn.execute(select(clusters).where(clusters.c.id == cluster_id)).first()
    if row is None:
        known = conn.execute(select(clusters.c.id).order_by(clusters.c.id)).scalars().all()
        raise NotInLibrary(
            f"no cluster {cluster_id}; existing clusters: "
            f"{', '.join(map(str, known)) or 'none yet (run `imgindex index`)'}"
        )
    return row


def list_clusters(
    conn: Connection, dim: int, representatives: int = 3, scan_limit: int = 2000
) -> list[dict[str, Any]]:
    """Every cluster with its size and the members nearest its centre (of the first
    ``scan_limit`` members, which keeps listing fast on huge clusters)."""
    out = []
    named = titles(conn)
    for row in conn.execute(select(clusters).order_by(clusters.c.id)).all():
        centroid = store.blob_to_vector(row.centroid)
        paths, vecs = _members(conn, row.id, dim, limit=scan_limit)
        reps = _nearest_first(paths, vecs, centroid)[:representatives]
        title = named.get(row.id, {})
        out.append(
            {
                "id": row.id,
                "name": title.get("name"),
                "label": title.get("label"),
                "size": row.size,
                "representatives": [r["path"] for r in reps],
            }
        )
    return out


def show_cluster(conn: Connection, cluster_id: int, dim: int) -> dict[str, Any]:
    """All members of a cluster, nearest to its centre first."""
    row = _require(conn, cluster_id)
    paths, vecs = _members(conn, cluster_id, dim)
    title = titles(conn).get(cluster_id, {})
    return {
        "id": cluster_id,
        "name": title.get("name"),
        "label": title.get("label"),
        "size": len(paths),
        "members": _nearest_first(paths, vecs, store.blob_to_vector(row.centroid)),
    }
