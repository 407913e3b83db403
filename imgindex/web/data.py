"""What the web page shows, without HTTP: one open library read by the server's threads (one
at a time: a Library and its FAISS cache are not shared between threads), answers in the
shapes of the CLI's ``--json``, with image ids beside paths (pictures are asked for by id)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgindex import settings
from imgindex.clusterstore import display_name, list_clusters, name_cluster
from imgindex.db import changes, images
from imgindex.db.schema import STATUS_INDEXED
from imgindex.duplicates import DEFAULT_THRESHOLD
from imgindex.errors import ImgIndexError, NotInLibrary
from imgindex.library import Library, Match
from imgindex.models import Embedder

NEIGHBOURS = 20
PAGE_MAX = 500
SEARCH_K = 40
SAMPLE_SCAN = 200  # a card's samples: the nearest to the centre of its first members


class WebLibrary:
    """The library behind the web page. ``embedder``: the model that answers searches by
    photo (the daemon's, loaded); None asks the daemon over its socket, else loads the model
    here on the first search."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.lib = Library.open(data_dir, purpose="imgindex web", database=database)
        self.embedder = embedder
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[Any, Any]] = {}  # name -> (library state, answer)

    def close(self) -> None:
        with self._lock:
            self.lib.close()

    def locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return fn()

    def _state(self) -> Any:
        """What changes whenever an answer could: the changes log's head, the cluster state
        and names, the settings."""
        from imgindex.db import clusters, meta

        with self.lib.engine.connect() as conn:
            return (
                changes.log_head(conn),
                images.count_by_status(conn),
                clusters.count(conn),
                tuple(sorted((k, tuple(v.items())) for k, v in clusters.titles(conn).items())),
                meta.config_version(conn),
            )

    def _cached(self, name: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            state = self._state()
            hit = self._cache.get(name)
            if hit is not None and hit[0] == state:
                return hit[1]
            answer = make()
            self._cache[name] = (state, answer)
            return answer

    # --- reads --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``imgindex status --json``."""
        return self.locked(self.lib.status)

    def clusters(self) -> list[dict[str, Any]]:
        """``imgindex clusters --json``, with each cluster's title and representatives' ids."""

        def make() -> list[dict[str, Any]]:
            rows = list_clusters(
                self.lib.engine, self.lib.dim, representatives=4, scan_limit=SAMPLE_SCAN
            )
            return [{**r, "title": display_name(r["id"], r)} for r in rows]

        return self._cached("clusters", make)

    def cluster(self, cluster_id: int, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of a cluster's members, by id: ``imgindex clusters show ID --json``'s
        shape without the distances (ordering a cluster of 10,000s by its centre reads all
        its vectors: seconds, where a page must take milliseconds)."""
        from imgindex.db import clusters

        if offset < 0 or not 1 <= limit <= PAGE_MAX:
            raise ImgIndexError(f"offset {offset}, limit {limit}: expected 0+ and 1-{PAGE_MAX}")
        with self._lock, self.lib.engine.connect() as conn:
            row = clusters.find(conn, cluster_id)
            if row is None:
                raise NotInLibrary(f"no cluster {cluster_id}")
            title = clusters.titles(conn).get(cluster_id, {})
            page = clusters.member_page(conn, cluster_id, offset, limit)
        return {
            "id": cluster_id,
            "name": title.get("name"),
            "label": title.get("label"),
            "title": display_name(cluster_id, title),
            "size": row.size,
            "offset": offset,
            "limit": limit,
            "order": "id",
            "members": [{"path": r.path, "host": r.host, "id": r.id} for r in page],
        }

    def image(self, image_id: int) -> dict[str, Any]:
        """One image: its file, state, cluster, its nearest neighbours with scores and its
        duplicates (same bytes, or cosine >= the duplicates' threshold)."""
        with self._lock:
            with self.lib.engine.connect() as conn:
                row = images.find_by_id(conn, image_id)
                if row is None:
                    raise NotInLibrary(f"no image {image_id}")
                same = [
                    r
                    for r in images.rows_by_hash(conn, row.content_hash)
                    if r.id != image_id and r.status == STATUS_INDEXED
                ]
                titles = _titles(conn)
            neighbours: list[Match] = []
            if row.status == STATUS_INDEXED and row.vector is not None:
                vec = images.blob_to_vector(row.vector)
                neighbours = self.lib.search(vec, NEIGHBOURS, exclude=image_id)
            ids = self._ids([m.path for m in neighbours], [m.host for m in neighbours])
        near = [self._match(m, i) for m, i in zip(neighbours, ids, strict=True)]
        dup_ids = {r.id for r in same}
        dups = [{"id": r.id, "path": r.path, "host": r.host, "score": 1.0} for r in same]
        dups += [m for m in near if m["score"] >= DEFAULT_THRESHOLD and m["id"] not in dup_ids]
        cluster = row.cluster_id
        return {
            "id": row.id,
            "path": row.path,
            "host": row.host,
            "status": row.status,
            "reason": row.reason,
            "size": row.size,
            "width": row.width,
            "height": row.height,
            "format": row.format,
            "modified": row.mtime_ns / 1e9,
            "cluster": cluster,
            "cluster_title": None
            if cluster is None
            else display_name(cluster, titles.get(cluster)),
            "neighbours": near,
            "duplicates": dups,
        }

    def _ids(self, paths: list[str], hosts: list[str]) -> list[int | None]:
        with self.lib.engine.connect() as conn:
            found = images.ids_by_paths(conn, list(zip(hosts, paths, strict=True)))
        return [found.get((h, p)) for h, p in zip(hosts, paths, strict=True)]

    @staticmethod
    def _match(m: Match, image_id: int | None) -> dict[str, Any]:
        """``imgindex similar --json``'s shape, with the id."""
        return {
            "path": m.path,
            "score": round(m.score, 6),
            "cluster": m.cluster,
            "host": m.host,
            "id": image_id,
        }

    def picture_source(self, image_id: int) -> tuple[str, int]:
        """``(path, mtime_ns)`` of an image this host can show; NotInLibrary else."""
        with self.lib.engine.connect() as conn:
            row = images.find_by_id(conn, image_id)
        if row is None or row.host != self.lib.host:
            raise NotInLibrary(f"no image {image_id} on this host")
        return row.path, row.mtime_ns

    def search(self, name: str, data: bytes, k: int = SEARCH_K) -> list[dict[str, Any]]:
        """The ``k`` nearest images to an uploaded photo (kept in memory, never written)."""
        from imgindex.query import decode_photo

        img = decode_photo(name, data, self.lib.model)
        vector = self._embed(name, img.pixels, data, k)
        with self._lock:
            matches = vector if isinstance(vector, list) else self.lib.search(vector, k)
            ids = self._ids([m.path for m in matches], [m.host for m in matches])
        return [self._match(m, i) for m, i in zip(matches, ids, strict=True)]

    def _embed(self, name: str, pixels: np.ndarray, data: bytes, k: int) -> Any:
        """The photo's vector from the loaded model; else the daemon's matches; else the
        model loaded here (once)."""
        if self.embedder is None:
            from imgindex.client import ask_similar_bytes

            answer = ask_similar_bytes(self.lib.paths, name, data, k)
            if answer is not None:
                return answer
            from imgindex.models import load_embedder

            with self._lock:
                if self.embedder is None:
                    self.embedder = load_embedder(self.lib.model, cache_dir=self.lib.paths.weights)
        return self.embedder.embed(pixels[None])[0]

    def duplicates(self) -> dict[str, Any]:
        """Every duplicate group with its members' facts and the keeper the library's policy
        picks; the policy and the quarantine folder."""
        from imgindex.quarantine import batches, review

        s = settings.load(self.lib.engine)

        def make() -> list[dict[str, Any]]:
            return [dataclasses.asdict(r) for r in review(self.lib, s.keep)]

        groups = self._cached(f"duplicates:{s.keep}", make)
        return {
            "keep": s.keep,
            "quarantine": s.quarantine,
            "groups": groups,
            "undoable": len(batches(self.lib)),
        }

    def map(self) -> dict[str, Any]:
        """The report's map: each indexed image's id, x, y and cluster."""
        from imgindex.atlas import library_map

        def make() -> dict[str, Any]:
            atlas = library_map(self.lib)
            with self.lib.engine.connect() as conn:
                where = images.cluster_assignments(conn)
            return {
                "method": atlas.method,
                "ids": atlas.ids.tolist(),
                "x": [round(float(v), 4) for v in atlas.xy[:, 0]],
                "y": [round(float(v), 4) for v in atlas.xy[:, 1]],
                "cluster": [where.get(int(i), -1) for i in atlas.ids],
            }

        return self._cached("map", make)

    # --- changes ------------------------------------------------------------------------------

    def rename(self, cluster_id: int, name: str | None) -> dict[str, Any]:
        with self._lock:
            name_cluster(self.lib.engine, cluster_id, name)
            self._cache.pop("clusters", None)
        return {"id": cluster_id, "name": name}

    def resolve(self, keeper: int) -> dict[str, Any]:
        """Set aside the others of the group that holds ``keeper``, into the library's
        quarantine folder."""
        from imgindex.quarantine import resolve

        s = settings.load(self.lib.engine)
        if not s.quarantine:
            raise ImgIndexError(
                "no quarantine folder: set one with `imgindex config quarantine DIR`"
            )
        with self._lock:
            done = resolve(self.lib, Path(s.quarantine), s.keep, keepers=[keeper])
            self._cache.clear()
        return done.as_dict()

    def undo(self) -> list[dict[str, Any]]:
        from imgindex.quarantine import undo

        with self._lock:
            done = undo(self.lib)
            self._cache.clear()
        return [d.as_dict() for d in done]

    def overview(self) -> dict[str, Any]:
        """``status`` with the time it was read (the page polls it)."""
        return {**self.status(), "at": time.time()}


def _titles(conn: Any) -> dict[int, dict[str, str | None]]:
    from imgindex.db import clusters

    return clusters.titles(conn)
