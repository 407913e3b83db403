"""``imgindex report``: one self-contained HTML file about a library, for any browser offline.

It holds (a) the 2-D map (:mod:`imgindex.atlas`) drawn on a canvas, each point coloured by its
cluster, with its thumbnail and file name on hover; (b) a contact sheet per cluster, the members
nearest the centre first; (c) the silhouette-versus-k plot k was chosen by, as inline SVG.
Everything is inline (CSS, script, data, thumbnails as base64 JPEGs); nothing is fetched. The
page's template, style sheet and script are package data (``imgindex/report_page/``).
Thumbnails are capped (``THUMBS_MAX``): sheet members first, then a random sample of the map;
files that are gone or do not decode get a placeholder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgindex.db import images, meta
from imgindex.db.schema import STATUS_FAILED, STATUS_INDEXED, STATUS_PENDING
from imgindex.errors import ImgIndexError

log = logging.getLogger(__name__)

THUMB_PX = 64  # longest side of an embedded thumbnail
THUMBS_MAX = 3_000  # thumbnails embedded at most (about 1.5 KB each, base64)
SHEET_SIZE = 24  # members shown per cluster
GRID = 10_000  # map coordinates are sent as integers 0..GRID
SEED = 0
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
    "#393b79",
]
UNCLUSTERED = "#b0b0b0"


@dataclass(frozen=True)
class Written:
    """What ``write`` produced."""

    path: Path
    size: int  # bytes
    points: int
    thumbnails: int
    clusters: int
    seconds: float


def human_size(size: int) -> str:
    """``842 KB``, ``3.4 MB``."""
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(1, round(size / 1e3))} KB"


def thumbnail(path: str | None, px: int = THUMB_PX) -> str:
    """A base64 JPEG of the file at ``path``, upright, at most ``px`` on its longest side; ""
    when the file is gone or does not decode, or for None (another host's file, not on this
    host's disks): the report shows a placeholder."""
    from imgindex.decode import open_upright

    if path is None:
        return ""
    try:
        img = open_upright(Path(path).read_bytes(), min_size=px)
        img.thumbnail((px, px), Image.Resampling.LANCZOS, reducing_gap=2.0)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=72, optimize=True)
    except (OSError, ValueError, ImgIndexError, Image.DecompressionBombError):
        return ""
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(paths: list[str | None], px: int = THUMB_PX) -> list[str]:
    """``thumbnail`` of every path, decoded in threads (Pillow releases the GIL)."""
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: thumbnail(p, px), paths, chunksize=16))


def colours(n: int, unclustered: int | None = None) -> list[str]:
    """``n`` distinct colours: a 20-colour palette, then spread hues; the last one grey when
    there are ``unclustered`` images (they come last)."""
    named = n - (1 if unclustered else 0)
    out = [
        PALETTE[i] if i < len(PALETTE) else f"hsl({(i * 137.508) % 360:.0f},65%,45%)"
        for i in range(named)
    ]
    return out + [UNCLUSTERED] * (n - named)


def nearest_members(
    conn: Any, dim: int, centers: dict[int, np.ndarray], per: int = SHEET_SIZE
) -> dict[int, list[int]]:
    """The ``per`` image ids of every cluster nearest its centre, nearest first."""
    ids, cids, dist = [], [], []
    for chunk_ids, vecs, chunk_cids in images.iter_vectors(conn, dim):
        known = np.isin(chunk_cids, list(centers))
        if not known.any():
            continue
        centre = np.stack([centers[int(c)] for c in chunk_cids[known]])
        ids.append(chunk_ids[known])
        cids.append(chunk_cids[known])
        dist.append(np.linalg.norm(vecs[known] - centre, axis=1))
    if not ids:
        return {}
    all_ids, all_cids, all_dist = map(np.concatenate, (ids, cids, dist))
    order = np.lexsort((all_dist, all_cids))
    out: dict[int, list[int]] = {}
    for i in order:
        members = out.setdefault(int(all_cids[i]), [])
        if len(members) < per:
            members.append(int(all_ids[i]))
    return out


def silhouette(conn: Any, dim: int, k_setting: str) -> dict[str, Any]:
    """``{"scores": {k: score}, "marks": {k: label}, "source": text}`` for the plot, from the
    clustering's choice of k (:func:`imgindex.organize.k_choice`)."""
    from imgindex.organize import k_choice

    choice = k_choice(conn, k_setting, dim)
    if choice.stored:
        scored = f", {choice.sample:,} of them scored" if choice.sample else ""
        return {
            "scores": choice.scores,
            "marks": {choice.best: "chosen"} if choice.best is not None else {},
            "source": f"scored when k was chosen automatically, at {choice.images:,} "
            f"images{scored}",
        }
    marks = {choice.best: "best"} if choice.best is not None else {}
    why = "k has not been chosen by silhouette yet"
    if k_setting.isdigit():
        mine = int(k_setting)
        marks[mine] = "yours, best" if mine in marks else "yours"
        why = f"k is set to {k_setting}, not chosen by silhouette"
    return {
        "scores": choice.scores,
        "marks": marks,
        "source": f"scored for this report on a sample of {choice.sample:,} images ({why})",
    }


def gather(lib: Any, thumbs_max: int = THUMBS_MAX, sheet_size: int = SHEET_SIZE) -> dict:
    """Everything the page shows, as one JSON-able dict (see ``_PAGE``'s script)."""
    from imgindex.atlas import library_map
    from imgindex.clusterstore import display_name
    from imgindex.db.clusters import load_state, titles

    atlas = library_map(lib)
    where = {int(i): n for n, i in enumerate(atlas.ids)}
    with lib.engine.connect() as conn:
        rows = [r for r in images.indexed_files(conn) if r.id in where]
        counts = images.count_by_status(conn)
        state = load_state(conn)
        centers = dict(zip(state.ids.tolist(), state.centers, strict=True)) if state else {}
        sheets = nearest_members(conn, lib.dim, centers, sheet_size)
        named = titles(conn)
        groups = meta.groups(conn)
        scores = silhouette(conn, lib.dim, lib.k_setting)
    sizes: dict[int, int] = {}
    for r in rows:
        cid = r.cluster_id if r.cluster_id in centers else -1
        sizes[cid] = sizes.get(cid, 0) + 1
    # by group (largest first; a library too small for groups has none), then by size
    group_size: dict[int, int] = {}
    for cid, n in sizes.items():
        if cid in groups.of:
            group_size[groups.of[cid]] = group_size.get(groups.of[cid], 0) + n
    group_rank = {g: i for i, g in enumerate(sorted(group_size, key=lambda g: (-group_size[g], g)))}

    def rank(cid: int) -> int:
        return group_rank.get(groups.of.get(cid, -1), len(group_rank))

    order = sorted(sizes, key=lambda c: (c < 0, rank(c), -sizes[c], c))
    palette = colours(len(order), sizes.get(-1))
    if group_rank:  # the map's colour is the group: clusters of one group share it
        by_group = colours(len(group_rank))
        palette = [
            by_group[rank(c)] if c in groups.of else p for c, p in zip(order, palette, strict=True)
        ]
    slot = {cid: i for i, cid in enumerate(order)}
    points = _points(rows, atlas.xy[[where[r.id] for r in rows]], slot)
    index_of = {r.id: i for i, r in enumerate(rows)}
    thumbed = _pick_thumbs(rows, sheets, index_of, thumbs_max)
    points["t"] = [-1] * len(rows)
    for n, i in enumerate(thumbed):
        points["t"][i] = n
    return {
        "points": points,
        "thumbs": thumbnails([rows[i].path if rows[i].host == lib.host else None for i in thumbed]),
        "clusters": [
            {
                "id": cid,
                "name": display_name(cid, named.get(cid)) if cid >= 0 else "not clustered yet",
                "size": sizes[cid],
                "color": colour,
                "members": [index_of[i] for i in sheets.get(cid, []) if i in index_of],
                "group": _group(groups, cid),
            }
            for cid, colour in zip(order, palette, strict=True)
        ],
        "silhouette": scores,
        "summary": {
            "data_dir": str(lib.paths.root),
            "model": lib.model,
            "k": lib.k_setting,
            "indexed": counts.get(STATUS_INDEXED, 0),
            "failed": counts.get(STATUS_FAILED, 0),
            "pending": counts.get(STATUS_PENDING, 0),
            "map": _map_note(atlas.method, atlas.sampled, len(rows)),
        },
    }


def _group(groups: Any, cid: int) -> dict[str, Any] | None:
    """``{"id", "name"}`` of the cluster's group (None: none)."""
    if cid not in groups.of:
        return None
    gid = groups.of[cid]
    title = groups.titles.get(gid, {})
    return {"id": gid, "name": title.get("name") or title.get("label") or f"group {gid}"}


def _points(rows: list, xy: np.ndarray, slot: dict[int, int]) -> dict[str, list]:
    """Column arrays: integer coordinates, cluster slot, file name and folder (deduplicated)."""
    folders: dict[str, int] = {}
    names, dirs = [], []
    for r in rows:
        folder, name = os.path.split(r.path)
        names.append(name)
        dirs.append(folders.setdefault(folder, len(folders)))
    grid = np.rint(np.clip(xy, 0, 1) * GRID).astype(int) if len(xy) else np.zeros((0, 2), int)
    return {
        "x": grid[:, 0].tolist(),
        "y": grid[:, 1].tolist(),
        "c": [slot[r.cluster_id if r.cluster_id in slot else -1] for r in rows],
        "f": names,
        "d": dirs,
        "dirs": list(folders),
    }


def _pick_thumbs(
    rows: list, sheets: dict[int, list[int]], index_of: dict[int, int], limit: int
) -> list[int]:
    """Rows that get a thumbnail, at most ``limit``: the sheets' members (each sheet's nearest
    first, round robin), then a random sample of the rest of the map."""
    columns = [[index_of[i] for i in members if i in index_of] for members in sheets.values()]
    chosen = [c[r] for r in range(max(map(len, columns), default=0)) for c in columns if r < len(c)]
    chosen = chosen[:limit]
    taken = set(chosen)
    rest = np.array([i for i in range(len(rows)) if i not in taken], dtype=int)
    room = limit - len(chosen)
    if len(rest) > room:
        rest = np.sort(np.random.default_rng(SEED).choice(rest, size=room, replace=False))
    return chosen + rest.tolist()


def _map_note(method: str, sampled: int, n: int) -> str:
    if method == "tsne+neighbours":
        return (
            f"t-SNE of {sampled:,} sampled images; the other {n - sampled:,} are placed beside "
            "their nearest sampled neighbours"
        )
    if method == "tsne":
        return f"t-SNE of all {n:,} images (PCA to 50 dimensions first)"
    return f"PCA of {n:,} images (too few for t-SNE)"


def silhouette_svg(data: dict[str, Any], width: int = 640, height: int = 300) -> str:
    """Inline SVG: silhouette score against k, the chosen (or best) k marked."""
    scores = data["scores"]
    if not scores:
        return '<p class="note">Too few images to compare values of k.</p>'
    ks = sorted(scores)
    left, right, top, bottom = 56, 16, 12, 64
    lo, hi = min(0.0, *scores.values()), max(scores.values())
    hi = hi if hi > lo else lo + 1

    def px(k: int) -> float:  # candidates evenly spaced, as the tutorials plot them
        return left + 12 + ks.index(k) / max(1, len(ks) - 1) * (width - left - right - 24)

    def py(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    marks = {k: label for k, label in data["marks"].items() if k in scores}
    parts = [
        f'<svg id="silhouette" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="silhouette score against k">',
        f'<line x1="{left}" y1="{py(lo)}" x2="{width - right}" y2="{py(lo)}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{py(lo)}" class="axis"/>',
    ]
    for v in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for k in ks:
        y = height - bottom + 16
        parts.append(f'<text x="{px(k):.1f}" y="{y}" text-anchor="middle">{k}</text>')
    for k in marks:
        parts.append(
            f'<line x1="{px(k):.1f}" y1="{top}" x2="{px(k):.1f}" y2="{py(lo)}" class="mark"/>'
        )
    line = " ".join(f"{px(k):.1f},{py(scores[k]):.1f}" for k in ks)
    parts.append(f'<polyline points="{line}" class="curve"/>')
    for k in ks:
        parts.append(
            f'<circle cx="{px(k):.1f}" cy="{py(scores[k]):.1f}" r="{6 if k in marks else 4}" '
            f'class="dot{" chosen" if k in marks else ""}" data-k="{k}">'
            f"<title>k = {k}: silhouette {scores[k]:.3f}</title></circle>"
        )
    said = " · ".join(f"k = {k} ({label}): {scores[k]:.3f}" for k, label in marks.items())
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - bottom + 32}" '
        'text-anchor="middle">k (number of clusters)</text>'
        f'<text x="{left}" y="{height - 6}" class="chosen-label">{html.escape(said)}</text></svg>'
    )
    return "\n".join(parts)


def asset(name: str) -> str:
    """A file of the page, shipped as package data in ``imgindex/report_page/``: the template
    ``report.html`` (``@@NAME@@`` fields), its ``report.css`` and ``report.js``."""
    return files("imgindex").joinpath("report_page").joinpath(name).read_text(encoding="utf-8")


def render(data: dict[str, Any]) -> str:
    """The page: ``data`` as inline JSON, the silhouette SVG, and the script that draws."""
    summary = data["summary"]
    blob = json.dumps(
        {k: data[k] for k in ("points", "thumbs", "clusters")},
        ensure_ascii=False,
        separators=(",", ":"),
    ).replace("<", "\\u003c")  # no "</script>" inside the data
    facts = (
        f"{summary['indexed']:,} images indexed · {summary['failed']:,} failed · "
        f"{summary['pending']:,} pending · {len(data['clusters'])} clusters · "
        f"model {summary['model']} · k {summary['k']}"
    )
    fields = {
        "@@TITLE@@": html.escape(f"imgindex report: {summary['data_dir']}"),
        "@@FACTS@@": html.escape(facts),
        "@@MAPNOTE@@": html.escape(summary["map"]),
        "@@SILHOUETTE@@": silhouette_svg(data["silhouette"]),
        "@@SILNOTE@@": html.escape(data["silhouette"]["source"]),
        "@@GENERATED@@": html.escape(time.strftime("%Y-%m-%d %H:%M")),
        "@@CSS@@": asset("report.css"),
        "@@SCRIPT@@": asset("report.js"),
        "@@DATA@@": blob,
    }
    return re.sub(r"@@[A-Z]+@@", lambda m: fields[m.group(0)], asset("report.html"))


def write(lib: Any, out: Path, thumbs_max: int = THUMBS_MAX) -> Written:
    """Build the report of an open library and write it to ``out`` (replaced whole)."""
    from imgindex.export import write_atomically

    started = time.perf_counter()
    data = gather(lib, thumbs_max=thumbs_max)
    page = render(data).encode("utf-8", "surrogateescape")
    size = write_atomically(out, lambda fh: fh.write(page), text=False)
    return Written(
        path=out,
        size=size,
        points=len(data["points"]["x"]),
        thumbnails=sum(1 for t in data["thumbs"] if t),
        clusters=sum(1 for c in data["clusters"] if c["id"] >= 0),
        seconds=time.perf_counter() - started,
    )
