"""``imgindex report``: one self-contained HTML file about a library, for any browser offline.

It holds (a) the 2-D map (:mod:`imgindex.atlas`) drawn on a canvas, each point coloured by its
cluster, with its thumbnail and file name on hover; (b) a contact sheet per cluster, the members
nearest the centre first; (c) the silhouette-versus-k plot k was chosen by, as inline SVG.
Everything is inline (CSS, script, data, thumbnails as base64 JPEGs); nothing is fetched.
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
SILHOUETTE_SAMPLE = 1_500  # vectors scored when the library's k was not chosen by silhouette
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


def thumbnail(path: str, px: int = THUMB_PX) -> str:
    """A base64 JPEG of the file at ``path``, upright, at most ``px`` on its longest side; ""
    when the file is gone or does not decode (the report shows a placeholder)."""
    from imgindex.decode import open_upright

    try:
        img = open_upright(Path(path).read_bytes(), min_size=px)
        img.thumbnail((px, px), Image.Resampling.LANCZOS, reducing_gap=2.0)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=72, optimize=True)
    except (OSError, ValueError, ImgIndexError, Image.DecompressionBombError):
        return ""
    return base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(paths: list[str], px: int = THUMB_PX) -> list[str]:
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
    """``{"scores": {k: score}, "marks": {k: label}, "source": text}``: the scores stored when
    k was chosen automatically, else (k fixed by the user) scores computed now on a sample."""
    stored = meta.auto_k(conn)
    if stored is not None and stored.silhouette and not k_setting.isdigit():
        return {
            "scores": stored.silhouette,
            "marks": {stored.k: "chosen"},
            "source": f"scored when k was chosen automatically, on {stored.at} images",
        }
    from imgindex.cluster import choose_k

    sample = images.sample_vectors(conn, SILHOUETTE_SAMPLE, dim, SEED)
    best, scores = choose_k(sample, seed=SEED) if len(sample) >= 3 else (0, {})
    marks = {best: "best"} if scores else {}
    if k_setting.isdigit():
        mine = int(k_setting)
        marks[mine] = "yours, best" if mine in marks else "yours"
    return {
        "scores": {int(k): float(v) for k, v in scores.items()},
        "marks": marks,
        "source": f"scored for this report on a sample of {len(sample):,} images (k is set "
        f"to {k_setting}, not chosen by silhouette)",
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
        scores = silhouette(conn, lib.dim, lib.k_setting)
    sizes: dict[int, int] = {}
    for r in rows:
        cid = r.cluster_id if r.cluster_id in centers else -1
        sizes[cid] = sizes.get(cid, 0) + 1
    order = sorted(sizes, key=lambda c: (c < 0, -sizes[c], c))
    slot = {cid: i for i, cid in enumerate(order)}
    points = _points(rows, atlas.xy[[where[r.id] for r in rows]], slot)
    index_of = {r.id: i for i, r in enumerate(rows)}
    thumbed = _pick_thumbs(rows, sheets, index_of, thumbs_max)
    points["t"] = [-1] * len(rows)
    for n, i in enumerate(thumbed):
        points["t"][i] = n
    return {
        "points": points,
        "thumbs": thumbnails([rows[i].path for i in thumbed]),
        "clusters": [
            {
                "id": cid,
                "name": display_name(cid, named.get(cid)) if cid >= 0 else "not clustered yet",
                "size": sizes[cid],
                "color": colour,
                "members": [index_of[i] for i in sheets.get(cid, []) if i in index_of],
            }
            for cid, colour in zip(order, colours(len(order), sizes.get(-1)), strict=True)
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
        "@@CSS@@": _CSS,
        "@@SCRIPT@@": _SCRIPT,
        "@@DATA@@": blob,
    }
    return re.sub(r"@@[A-Z]+@@", lambda m: fields[m.group(0)], _PAGE)


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


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<script>
window.addEventListener("error", function (e) {
  var root = document.documentElement, seen = root.getAttribute("data-errors");
  root.setAttribute("data-errors", (seen ? seen + " | " : "") + String(e.message || e.type));
});
</script>
<style>@@CSS@@</style>
</head>
<body>
<header>
<h1>@@TITLE@@</h1>
<p class="facts">@@FACTS@@</p>
</header>
<main>
<section id="map-section">
<h2>Map</h2>
<p class="note">@@MAPNOTE@@. Colour is the cluster; hover a point for its picture and name,
click it to jump to its cluster&#8217;s sheet, click a cluster below to pick it out.</p>
<div id="map-box"><canvas id="map"></canvas><div id="ring"></div><div id="tip"></div></div>
<div id="legend"></div>
</section>
<section id="sheets-section">
<h2>Clusters</h2>
<p class="note">Each cluster&#8217;s members nearest its centre first.</p>
<div id="sheets"></div>
</section>
<section id="k-section">
<h2>Choosing k</h2>
<p class="note">Silhouette score for each number of clusters k (higher: better separated);
@@SILNOTE@@.</p>
@@SILHOUETTE@@
</section>
</main>
<footer>Made by imgindex on @@GENERATED@@. Self-contained: no network needed.</footer>
<script type="application/json" id="data">@@DATA@@</script>
<script>@@SCRIPT@@</script>
</body>
</html>
"""

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: #222; background: #fafafa; }
header, main, footer { max-width: 1160px; margin: 0 auto; padding: 0 20px; }
h1 { font-size: 20px; margin: 18px 0 2px; word-break: break-all; }
h2 { font-size: 17px; margin: 26px 0 4px; }
.facts, .note, footer { color: #555; }
footer { margin: 30px auto; font-size: 12px; }
#map-box { position: relative; background: #fff; border: 1px solid #ddd; }
#map { display: block; width: 100%; height: 640px; cursor: crosshair; }
#ring { position: absolute; width: 14px; height: 14px; margin: -9px 0 0 -9px; display: none;
  border: 2px solid #000; border-radius: 50%; pointer-events: none; }
#tip { position: absolute; display: none; pointer-events: none; background: #fff;
  border: 1px solid #bbb; box-shadow: 0 2px 8px rgba(0,0,0,.2); padding: 6px;
  max-width: 260px; font-size: 12px; z-index: 2; }
#tip img, #tip .ph { display: block; margin-bottom: 4px; }
#tip b { display: block; word-break: break-all; }
#tip .dir { color: #777; word-break: break-all; }
#legend { display: flex; flex-wrap: wrap; gap: 4px 12px; margin: 8px 0; }
#legend button { border: 0; background: none; padding: 2px 4px; font: inherit; cursor: pointer;
  border-radius: 3px; }
#legend button.on { background: #e4e4e4; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 50%;
  margin-right: 5px; vertical-align: -1px; }
.sheet { background: #fff; border: 1px solid #ddd; margin: 10px 0; padding: 6px 12px 12px; }
.sheet h3 { font-size: 15px; margin: 4px 0 0; }
.sheet .meta { color: #666; font-size: 12px; margin: 0 0 6px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, 80px); gap: 6px; }
figure { margin: 0; width: 80px; }
figure img { width: 64px; height: 64px; object-fit: contain; display: block;
  margin: 0 auto; background: #f0f0f0; }
figure .ph { margin: 0 auto; }
figcaption { font-size: 10px; color: #555; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; text-align: center; }
.ph { width: 64px; height: 64px; background: repeating-linear-gradient(45deg, #eee 0 6px,
  #e2e2e2 6px 12px); color: #888; font-size: 10px; display: flex; align-items: center;
  justify-content: center; text-align: center; }
svg text { font-size: 11px; fill: #444; }
svg .axis { stroke: #888; }
svg .curve { fill: none; stroke: #1f77b4; stroke-width: 2; }
svg .dot { fill: #1f77b4; }
svg .dot.chosen { fill: #d62728; }
svg .chosen-label { fill: #d62728; font-weight: bold; }
svg .mark { stroke: #d62728; stroke-dasharray: 3 3; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var P = data.points, C = data.clusters, T = data.thumbs, n = P.x.length;
  var canvas = document.getElementById("map"), box = document.getElementById("map-box");
  var tip = document.getElementById("tip"), ring = document.getElementById("ring");
  var focus = -1, view = null, cells = null, CELL = 12, drawn = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function picture(i) {  // the point's thumbnail, a placeholder, or null (none embedded)
    var t = P.t[i];
    if (t < 0) return null;
    if (!T[t]) return el("div", "ph", "no preview");
    var img = el("img");
    img.src = "data:image/jpeg;base64," + T[t];
    img.alt = P.f[i];
    return img;
  }
  function swatch(c) {
    var s = el("span", "swatch");
    s.style.background = c.color;
    return s;
  }

  function fit() {
    var w = canvas.clientWidth, h = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    var mx = 1, my = 1, m = 14;
    for (var i = 0; i < n; i++) { if (P.x[i] > mx) mx = P.x[i]; if (P.y[i] > my) my = P.y[i]; }
    var s = Math.min((w - 2 * m) / mx, (h - 2 * m) / my);
    view = { s: s, ox: (w - s * mx) / 2, oy: (h - s * my) / 2, dpr: dpr };
    cells = new Map();
    for (var j = 0; j < n; j++) {
      var key = Math.floor(sx(j) / CELL) + "," + Math.floor(sy(j) / CELL);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(j);
    }
  }
  function sx(i) { return view.ox + P.x[i] * view.s; }
  function sy(i) { return view.oy + P.y[i] * view.s; }

  function draw() {
    fit();
    var ctx = canvas.getContext("2d"), r = n > 20000 ? 1.2 : n > 3000 ? 2 : 3;
    ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var bySlot = C.map(function () { return []; });
    for (var i = 0; i < n; i++) bySlot[P.c[i]].push(i);
    drawn = 0;
    var order = C.map(function (_, k) { return k; });
    if (focus >= 0) { order.splice(focus, 1); order.push(focus); }
    order.forEach(function (k) {
      ctx.globalAlpha = focus < 0 ? (n > 20000 ? 0.6 : 0.85) : k === focus ? 1 : 0.12;
      ctx.fillStyle = C[k].color;
      ctx.beginPath();
      bySlot[k].forEach(function (i) {
        ctx.moveTo(sx(i) + r, sy(i));
        ctx.arc(sx(i), sy(i), r, 0, 2 * Math.PI);
        drawn++;
      });
      ctx.fill();
    });
    ctx.globalAlpha = 1;
    document.body.dataset.points = String(drawn);
  }

  function nearest(x, y) {
    var best = -1, bd = 100, cx = Math.floor(x / CELL), cy = Math.floor(y / CELL);
    for (var a = cx - 1; a <= cx + 1; a++) {
      for (var b = cy - 1; b <= cy + 1; b++) {
        (cells.get(a + "," + b) || []).forEach(function (i) {
          var d = (sx(i) - x) * (sx(i) - x) + (sy(i) - y) * (sy(i) - y);
          if (d < bd && (focus < 0 || P.c[i] === focus)) { bd = d; best = i; }
        });
      }
    }
    return best;
  }

  function hover(ev) {
    var rect = canvas.getBoundingClientRect(), x = ev.clientX - rect.left;
    var y = ev.clientY - rect.top, i = nearest(x, y);
    if (i < 0) { tip.style.display = ring.style.display = "none"; return; }
    tip.replaceChildren();
    var pic = picture(i);
    if (pic) tip.appendChild(pic);
    tip.appendChild(el("b", "", P.f[i]));
    tip.appendChild(el("div", "dir", P.dirs[P.d[i]]));
    var c = C[P.c[i]], line = el("div");
    line.appendChild(swatch(c));
    line.appendChild(document.createTextNode(c.name));
    tip.appendChild(line);
    tip.style.display = ring.style.display = "block";
    ring.style.left = sx(i) + "px";
    ring.style.top = sy(i) + "px";
    var left = sx(i) + 14, top = sy(i) + 14;
    if (left + tip.offsetWidth > box.clientWidth) left = sx(i) - tip.offsetWidth - 14;
    if (top + tip.offsetHeight > box.clientHeight) top = sy(i) - tip.offsetHeight - 14;
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
    canvas.dataset.hover = String(i);
  }

  function legend() {
    var box = document.getElementById("legend");
    C.forEach(function (c, k) {
      var b = el("button");
      b.appendChild(swatch(c));
      b.appendChild(document.createTextNode(c.name + " (" + c.size + ")"));
      b.title = c.id >= 0 ? "cluster " + c.id : "images not in a cluster yet";
      b.addEventListener("click", function () {
        focus = focus === k ? -1 : k;
        Array.prototype.forEach.call(box.children, function (x, j) {
          x.classList.toggle("on", j === focus);
        });
        draw();
      });
      box.appendChild(b);
    });
  }

  function sheets() {
    var box = document.getElementById("sheets"), count = 0;
    C.forEach(function (c) {
      if (c.id < 0) return;
      var s = el("section", "sheet"), h = el("h3");
      s.id = "cluster-" + c.id;
      s.dataset.cluster = String(c.id);
      h.appendChild(swatch(c));
      h.appendChild(document.createTextNode(c.name));
      s.appendChild(h);
      s.appendChild(el("p", "meta", c.size + " images \\u00b7 cluster " + c.id +
        " \\u00b7 the " + c.members.length + " nearest its centre"));
      var grid = el("div", "grid");
      c.members.forEach(function (i) {
        var f = el("figure"), pic = picture(i) || el("div", "ph", "no preview");
        f.title = P.dirs[P.d[i]] + "/" + P.f[i];
        f.appendChild(pic);
        f.appendChild(el("figcaption", "", P.f[i]));
        grid.appendChild(f);
      });
      s.appendChild(grid);
      box.appendChild(s);
      count++;
    });
    document.body.dataset.sheets = String(count);
  }

  legend();
  sheets();
  draw();
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", function () {
    tip.style.display = ring.style.display = "none";
  });
  canvas.addEventListener("click", function (ev) {
    var i = nearest(ev.clientX - canvas.getBoundingClientRect().left,
      ev.clientY - canvas.getBoundingClientRect().top);
    if (i >= 0 && C[P.c[i]].id >= 0) location.hash = "cluster-" + C[P.c[i]].id;
  });
  var pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(draw, 100);
  });
  document.body.dataset.thumbs = String(T.filter(function (t) { return t; }).length);
  document.body.dataset.ready = "1";
})();
"""
