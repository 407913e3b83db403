"""Queries at scale: cold `imgindex similar` and in-process search latency, by library size.

    python bench/query.py [--sizes 10000 100000] [--dim 1280]

Builds synthetic libraries through the core (rows with random clustered unit vectors in
SQLite, then the FAISS cache built by opening the library), plus one real photo whose row is
indexed, and reports: the wall time of `python -m imgindex similar PHOTO` as a fresh process
(median of 5), and p50/p99 of in-process `Library.search` over 200 queries.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgindex import store
from imgindex.library import Library
from imgindex.schema import images


def build(root: Path, n: int, dim: int) -> tuple[Path, Path]:
    photo = root / "photos" / "query.jpg"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (120, 30, 200)).save(photo)
    data = root / "data"
    Library.create(data, [photo.parent], model="efficientnet_lite0").close()
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        now = time.time()
        for start in range(0, n, 20_000):
            m = min(20_000, n - start)
            x = centres[rng.integers(0, 100, m)] + rng.normal(size=(m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            conn.execute(images.insert(), [
                {"path": f"/synthetic/{start + i}.jpg", "root_id": 1, "size": 1, "mtime_ns": 1,
                 "status": "indexed", "model": lib.model, "vector": x[i].tobytes(),
                 "updated_at": now} for i in range(m)])
        st = photo.stat()
        conn.execute(images.insert().values(
            path=str(photo), root_id=1, size=st.st_size, mtime_ns=st.st_mtime_ns,
            status="indexed", model=lib.model, updated_at=now,
            vector=store.vector_to_blob(centres[0] / np.linalg.norm(centres[0]))))
        store.bump_index_version(conn)
    with Library.open(data, write=True) as lib:
        lib.vectors  # noqa: B018 - builds and saves the FAISS file
    return data, photo


def cold_cli(data: Path, photo: Path) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imgindex", "--data-dir", str(data), "similar",
                        str(photo), "--json"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process(data: Path, dim: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    with Library.open(data) as lib:
        vi = lib.vectors
        lat = []
        for _ in range(200):
            q = rng.normal(size=dim).astype(np.float32)
            start = time.perf_counter()
            vi.search(q / np.linalg.norm(q), 10)
            lat.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imgindex-query-"))
    print("| vectors | index | cold `imgindex similar` s | search p50 ms | search p99 ms |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        data, photo = build(tmp / str(n), n, args.dim)
        cold = cold_cli(data, photo)
        p50, p99 = in_process(data, args.dim)
        print(f"| {n:,} | flat | {cold:.2f} | {p50:.1f} | {p99:.1f} |", flush=True)


if __name__ == "__main__":
    main()
