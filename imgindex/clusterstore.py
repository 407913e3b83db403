"""The read side of ``imgindex clusters``, and clusters' labels and names.

Torch- and scikit-learn-free, so listing clusters is fast. The rows themselves are read and
written by :mod:`imgindex.db.clusters`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from imgindex.db import Connection, Engine
from imgindex.db import clusters as stored
from imgindex.db.images import blob_to_vector
from imgindex.errors import ImgIndexError, NotInLibrary

LABEL_SHARE = 0.2  # a second class joins the label when this share of the members has it


def _members(
    conn: Connection, cluster_id: int, dim: int, limit: int | None = None
) -> tuple[list[Any], np.ndarray]:
    """The members' ``(host, path, id)`` and their vectors."""
    rows = stored.members(conn, cluster_id, limit)
    vecs = np.stack([blob_to_vector(r.vector) for r in rows]) if rows else np.empty((0, dim))
    return [(r.host, r.path, r.id) for r in rows], vecs


def _nearest_first(files: list[Any], vecs: np.ndarray, centroid: np.ndarray) -> list[dict]:
    """``{"path", "distance", "host", "id"}`` of each of ``files``, nearest to ``centroid``
    first."""
    if not files:
        return []
    dist = np.linalg.norm(vecs - centroid[None, :], axis=1)
    return [
        {
            "path": files[i][1],
            "distance": round(float(dist[i]), 4),
            "host": files[i][0],
            "id": int(files[i][2]),
        }
        for i in np.argsort(dist, kind="stable")
    ]


# --- labels and names -----------------------------------------------------------------------


def refresh_labels(conn: Connection) -> None:
    """Label every cluster by its members' most frequent ImageNet top-1 classes (e.g. "tabby ·
    tiger cat"); users' names stay, following their cluster ids. Clusters gone lose both."""
    from imgindex.models import imagenet_label

    counts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for cid, label, n in stored.label_counts(conn):
        counts[cid].append((n, label))
    labels: dict[int, str | None] = {}
    for cid in stored.ids(conn):
        top = sorted(counts.get(cid, []), reverse=True)
        total = sum(n for n, _ in top)
        names = [
            imagenet_label(c)
            for i, (n, c) in enumerate(top[:2])
            if not i or n >= LABEL_SHARE * total
        ]
        labels[cid] = " · ".join(names) or None
    stored.set_labels(conn, labels)


def name_cluster(engine: Engine, cluster_id: int, name: str | None) -> None:
    """Give a cluster a name of the user's own (None: back to its label)."""
    with engine.begin() as conn:
        _require(conn, cluster_id)
        if name is not None and not name.strip():
            raise ImgIndexError("a cluster name cannot be empty; use --clear to remove one")
        stored.set_name(conn, cluster_id, name)


def display_name(cluster_id: int, title: dict[str, str | None] | None) -> str:
    """What a person should read for a cluster: its name, else its label, else its number."""
    title = title or {}
    return title.get("name") or title.get("label") or f"cluster {cluster_id}"


def _require(conn: Connection, cluster_id: int) -> Any:
    row = stored.find(conn, cluster_id)
    if row is None:
        known = stored.ids(conn)
        raise NotInLibrary(
            f"no cluster {cluster_id}; existing clusters: "
            f"{', '.join(map(str, known)) or 'none yet (run `imgindex index`)'}"
        )
    return row


def list_clusters(
    engine: Engine, dim: int, representatives: int = 3, scan_limit: int = 2000
) -> list[dict[str, Any]]:
    """Every cluster with its size and the members nearest its centre (of the first
    ``scan_limit`` members, which keeps listing fast on huge clusters)."""
    out = []
    with engine.connect() as conn:
        named = stored.titles(conn)
        for row in stored.all_clusters(conn):
            centroid = blob_to_vector(row.centroid)
            files, vecs = _members(conn, row.id, dim, limit=scan_limit)
            reps = _nearest_first(files, vecs, centroid)[:representatives]
            title = named.get(row.id, {})
            out.append(
                {
                    "id": row.id,
                    "name": title.get("name"),
                    "label": title.get("label"),
                    "size": row.size,
                    "representatives": [r["path"] for r in reps],
                    "representative_ids": [r["id"] for r in reps],
                }
            )
    return out


def show_cluster(engine: Engine, cluster_id: int, dim: int) -> dict[str, Any]:
    """All members of a cluster, nearest to its centre first."""
    with engine.connect() as conn:
        row = _require(conn, cluster_id)
        files, vecs = _members(conn, cluster_id, dim)
        title = stored.titles(conn).get(cluster_id, {})
    return {
        "id": cluster_id,
        "name": title.get("name"),
        "label": title.get("label"),
        "size": len(files),
        "members": _nearest_first(files, vecs, blob_to_vector(row.centroid)),
    }
