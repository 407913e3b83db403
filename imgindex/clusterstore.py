"""The read side of ``imgindex clusters``, and clusters' labels and names.

Torch- and scikit-learn-free, so listing clusters is fast. The rows themselves are read and
written by :mod:`imgindex.db.clusters`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from imgindex.db import Connection, Engine, meta
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

    def title_of(pairs: list[tuple[int, int]]) -> str | None:
        top = sorted(pairs, reverse=True)
        total = sum(n for n, _ in top)
        names = [
            imagenet_label(c)
            for i, (n, c) in enumerate(top[:2])
            if not i or n >= LABEL_SHARE * total
        ]
        return " · ".join(names) or None

    labels = {cid: title_of(counts.get(cid, [])) for cid in stored.ids(conn)}
    stored.set_labels(conn, labels)
    groups = meta.groups(conn)
    if groups.titles:
        by_group: dict[int, Counter] = defaultdict(Counter)
        for cid, pairs in counts.items():
            if cid in groups.of:
                for n, c in pairs:
                    by_group[groups.of[cid]][c] += n
        for gid, title in groups.titles.items():
            title["label"] = title_of([(n, c) for c, n in by_group[gid].items()])
        meta.set_groups(conn, groups)


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
        group_of = meta.groups(conn).of
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
                    "group": group_of.get(row.id),
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


# --- groups of clusters (the second level) -----------------------------------------------------


def cluster_tree(engine: Engine, dim: int, representatives: int = 3) -> list[dict[str, Any]]:
    """Groups, largest first, each with its clusters (``list_clusters`` rows, largest first);
    clusters outside any group (a library too small for groups) under one ``id`` None."""
    rows = list_clusters(engine, dim, representatives)
    with engine.connect() as conn:
        titles = meta.groups(conn).titles
    by_group: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_group[row["group"]].append(row)
    out = []
    for gid, members in by_group.items():
        title = titles.get(gid, {}) if gid is not None else {}
        out.append(
            {
                "id": gid,
                "name": title.get("name"),
                "label": title.get("label"),
                "size": sum(c["size"] for c in members),
                "clusters": sorted(members, key=lambda c: -c["size"]),
            }
        )
    return sorted(out, key=lambda g: -g["size"])


def _require_group(conn: Connection, group_id: int) -> meta.Groups:
    groups = meta.groups(conn)
    if group_id not in groups.titles:
        known = ", ".join(map(str, sorted(groups.titles))) or "none yet (too few clusters)"
        raise NotInLibrary(f"no group {group_id}; existing groups: {known}")
    return groups


def show_group(engine: Engine, group_id: int, dim: int) -> dict[str, Any]:
    """A group's clusters, largest first, each with all its members nearest its centre
    first."""
    with engine.connect() as conn:
        groups = _require_group(conn, group_id)
        cids = [cid for cid, gid in groups.of.items() if gid == group_id]
    shown = sorted((show_cluster(engine, cid, dim) for cid in cids), key=lambda c: -c["size"])
    title = groups.titles[group_id]
    return {
        "id": group_id,
        "name": title.get("name"),
        "label": title.get("label"),
        "size": sum(c["size"] for c in shown),
        "clusters": shown,
    }


def name_group(engine: Engine, group_id: int, name: str | None) -> None:
    """Give a group a name of the user's own (None: back to its label)."""
    with engine.begin() as conn:
        groups = _require_group(conn, group_id)
        if name is not None and not name.strip():
            raise ImgIndexError("a group name cannot be empty; use --clear to remove one")
        groups.titles[group_id]["name"] = name
        meta.set_groups(conn, groups)
