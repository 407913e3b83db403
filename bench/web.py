"""The web page at scale: a fresh `imgindex serve` over a synthetic library, timed over HTTP.

    python bench/web.py [--size 100000] [--k 50] [--keep DIR]

The library: ``bench/query.py``'s clustered 1280-d unit vectors in SQLite, a FAISS file built
by the writer and one real photo, clustered with ``organize.consolidate`` into ``--k`` clusters.
Each "cold" figure is a freshly started server process (library opened, nothing read yet):
the requests a browser makes for that page, one after the other (the page's HTML, JS, CSS, the
session, then its API calls), wall time from the first request to the last answer. The photo
page is warm: its API call (the image, its 20 neighbours with scores, its duplicates) for 50
random images after 5 others. Thumbnails: the real photo's WebP made on demand, then cached.
Baseline, same run: a fresh `imgindex status --json` and `imgindex clusters show ID --json`
process (what a shell user waits for the same answers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).parent))
from PIL import Image
from query import CHUNK, synthetic

from imgindex.db import images
from imgindex.db.schema import images as images_table
from imgindex.library import Library
from imgindex.organize import consolidate

MODEL = "efficientnet_lite0"  # 1280-d; nothing is embedded: only its vectors' size matters

PAGE = ["/", "/static/app.js", "/static/style.css", "/api/session"]


def build(root: Path, n: int) -> tuple[Path, Path, float]:
    """The library in ``root`` (made unless it exists): ``n`` synthetic rows under a root that
    is not mounted and one real photo; the writer builds and saves the FAISS file."""
    data, photo = root / "data", root / "photos" / "query.jpg"
    if data.exists():
        return data, photo, float("nan")
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (1600, 1200), (120, 30, 200)).save(photo, quality=90)
    offline = root / "offline"
    Library.create(data, [photo.parent, offline], model=MODEL).close()
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        now, first = time.time(), None
        for start, x in zip(range(0, n, CHUNK), synthetic(n, lib.dim, n), strict=True):
            first = x[0] if first is None else first
            rows = [
                {"host": "", "path": f"{offline}/{start + i}.jpg", "root_id": 2, "size": 1,
                 "mtime_ns": 1, "status": "indexed", "model": MODEL, "vector": x[i].tobytes(),
                 "updated_at": now}
                for i in range(len(x))
            ]  # fmt: skip
            conn.execute(images_table.insert(), rows)
        st = photo.stat()
        assert first is not None
        conn.execute(
            images_table.insert().values(
                host="", path=str(photo), root_id=1, size=st.st_size, mtime_ns=st.st_mtime_ns,
                status="indexed", model=MODEL, updated_at=now, vector=first.tobytes(),
                width=1600, height=1200,
            )
        )  # fmt: skip
    started = time.perf_counter()
    with Library.open(data, write=True) as lib:
        lib.cache.load()
    return data, photo, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m imgindex serve` on a free loopback port."""

    def __init__(self, data: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgindex", "--data-dir", str(data), "serve", "--http",
             f"127.0.0.1:{port}"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "serving" in line, line
        self.startup = time.perf_counter() - started
        self.http = requests.Session()

    def get(self, path: str) -> requests.Response:
        got = self.http.get(self.url + path, timeout=120)
        assert got.status_code in (200, 304), (path, got.status_code, got.text[:200])
        return got

    def timed(self, paths: list[str]) -> float:
        started = time.perf_counter()
        for p in paths:
            self.get(p)
        return time.perf_counter() - started

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def cli_seconds(data: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), *args, "--json"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--keep", type=Path, help="Keep (and reuse) the library here.")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-web-"))
    root = root / f"web-{args.size}"
    root.mkdir(parents=True, exist_ok=True)
    data, photo, build_s = build(root, args.size)
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        started = time.perf_counter()
        from imgindex.db import clusters

        if clusters.count(conn) == 0:
            consolidate(conn, str(args.k), lib.dim)
        cluster_s = time.perf_counter() - started
        ids = images.indexed_ids(conn)
        real = images.find_by_path(conn, str(photo)).id
    print(f"library: {len(ids)} images; built {build_s:.1f} s, clustered "
          f"{cluster_s:.1f} s", file=sys.stderr)  # fmt: skip

    rng = np.random.default_rng(0)
    s = Server(data)
    try:
        overview = s.timed([*PAGE, "/api/status"])
        status = s.get("/api/status").json()
    finally:
        s.stop()
    s = Server(data)
    try:
        listing = s.timed([*PAGE, "/api/clusters"])
        rows = s.get("/api/clusters").json()
    finally:
        s.stop()
    biggest = max(rows, key=lambda r: r["size"])
    s = Server(data)
    try:
        cluster_page = s.timed([*PAGE, f"/api/clusters/{biggest['id']}?offset=0&limit=100"])
        later_page = s.timed([f"/api/clusters/{biggest['id']}?offset=1000&limit=100"])
        for i in rng.choice(ids, 5):
            s.get(f"/api/images/{int(i)}")
        photo_ms = []
        for i in rng.choice(ids, 50):
            started = time.perf_counter()
            body = s.get(f"/api/images/{int(i)}").json()
            photo_ms.append(1000 * (time.perf_counter() - started))
            assert len(body["neighbours"]) == 20
        thumb_cold = s.timed([f"/api/images/{real}/thumb"])
        thumb_warm = s.timed([f"/api/images/{real}/thumb"])
        startup = s.startup
    finally:
        s.stop()
    cli_status = cli_seconds(data, "status")
    cli_cluster = cli_seconds(data, "clusters", "show", str(biggest["id"]))
    photo_ms.sort()
    result = {
        "images": len(ids),
        "clusters": len(rows),
        "biggest_cluster": biggest["size"],
        "index_kind": status["index_kind"],
        "server_startup_s": round(startup, 3),
        "overview_cold_s": round(overview, 3),
        "clusters_list_cold_s": round(listing, 3),
        "cluster_page_cold_s": round(cluster_page, 3),
        "cluster_page_11_warm_s": round(later_page, 3),
        "photo_page_warm_ms_p50": round(statistics.median(photo_ms), 1),
        "photo_page_warm_ms_p95": round(photo_ms[int(0.95 * len(photo_ms)) - 1], 1),
        "thumbnail_made_ms": round(1000 * thumb_cold, 1),
        "thumbnail_cached_ms": round(1000 * thumb_warm, 1),
        "cli_status_s": round(cli_status, 3),
        "cli_clusters_show_s": round(cli_cluster, 3),
        "overview_vs_cli_status": round(overview / cli_status, 2),
        "cluster_page_vs_cli_clusters_show": round(cluster_page / cli_cluster, 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
