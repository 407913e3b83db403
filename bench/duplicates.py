"""`imgindex duplicates`: precision on real photos, time and recall at scale.

    python bench/duplicates.py [--caltech] [--sizes 20000 100000] [--keep DIR]

- ``--caltech``: caltech-dev (1,286 photos, ../shared/corpus) indexed with the default model
  (about 4 minutes on 2 cores; reused from ``--keep``). Prints how many different-photo pairs
  fall under candidate pHash distances and over candidate cosines (every one of the 826k pairs,
  brute force), every pair near the defaults, the groups `imgindex duplicates` finds, and how
  skewed real pHashes are (candidate pairs of the multi-index against uniform hashes).
- ``--sizes``: synthetic libraries (the clustered 1280-d vectors of ``bench/query.py``, uniform
  random pHashes and content hashes) with planted copies: exact ones (same hash, vector and
  pHash), pHash ones (0-4 bits off, cosine 0.8, like a grey copy), vector ones (cosine
  0.975-0.999, unrelated pHash, like a mirror image), and decoys that must not be grouped (6-8
  bits off at cosine 0.6; cosine 0.95). Reports the time of each tier, of `find_duplicates`,
  of a fresh `imgindex duplicates --json` process, its peak RSS, and planted pairs found.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from query import CHUNK, synthetic

from imgindex.db.images import iter_vectors
from imgindex.db.schema import images
from imgindex.duplicates import (
    _load_rows,
    exact_pairs,
    find_duplicates,
    phash_pairs,
    vector_pairs,
)
from imgindex.library import Library

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
KINDS = ["exact", "phash", "vector", "decoy_phash", "decoy_vector"]  # one planted row in 50


def caltech(keep: Path) -> None:
    root = CORPUS / "caltech-dev"
    if not root.is_dir():
        sys.exit(f"{root} is absent")
    data = keep / "caltech"
    if not (data / "imgindex.db").exists():
        for args in (["init", str(root)], ["index"]):
            subprocess.run(
                [sys.executable, "-m", "imgindex", "--data-dir", str(data), *args], check=True
            )
    with Library.open(data) as lib, lib.engine.connect() as conn:
        rows = _load_rows(conn)
        chunks = list(iter_vectors(conn, lib.dim))
        ids, x = (np.concatenate([c[k] for c in chunks]) for k in (0, 1))
        assert (ids == rows.ids).all()  # both in id order
    n = len(rows.ids)
    i, j = np.triu_indices(n, 1)
    u = rows.phashes.view(np.uint64)
    dist = np.bitwise_count(u[i] ^ u[j])
    cos = (x @ x.T)[i, j]
    folder = [Path(p).parent.name for p in rows.paths]
    print(f"caltech-dev: {n} photos, {len(i):,} pairs, {n - len(set(rows.hashes))} identical files")
    print("pHash distance <=  " + "  ".join(f"{d:>4}" for d in range(13)))
    print("pairs              " + "  ".join(f"{(dist <= d).sum():>4}" for d in range(13)))
    ts = [0.8, 0.86, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99]
    print("cosine >=          " + "  ".join(f"{t:>4}" for t in ts))
    print("pairs              " + "  ".join(f"{(cos >= t).sum():>4}" for t in ts))
    print("\npairs at distance <= 8 or cosine >= 0.93 (inspect them):")
    for k in np.flatnonzero((dist <= 8) | (cos >= 0.93)):
        a, b = i[k], j[k]
        print(
            f"  {dist[k]:>2} bits  cos {cos[k]:.4f}  {rows.paths[a].removeprefix(str(root))}"
            f"  {rows.paths[b].removeprefix(str(root))}"
            + ("" if folder[a] == folder[b] else "  (different folders)")
        )
    with Library.open(data) as lib:
        start = time.perf_counter()
        groups = find_duplicates(lib)
        took = time.perf_counter() - start
    print(
        f"\n`imgindex duplicates` (defaults): {len(groups)} groups, "
        f"{sum(len(g.members) for g in groups)} images, {took:.2f} s"
    )
    for g in groups:
        print(
            f"  {'+'.join(g.reason):<20}"
            + "  ".join(
                f"{m.path.removeprefix(str(root))} ({m.score:.3f}, {m.distance} bits)"
                for m in g.members
            )
        )
    uniform = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    real, rand = _candidates(rows.phashes, 4), _candidates(uniform, 4)
    print(f"\nmulti-index candidate pairs at distance 4: {real} real pHashes, {rand} uniform")


def _candidates(hashes: np.ndarray, max_distance: int) -> int:
    """Pairs sharing a bucket in some range (what ``phash_pairs`` compares), with repeats."""
    u = hashes.view(np.uint64)
    bounds = np.linspace(0, 64, max_distance + 2).round().astype(int).tolist()
    total = 0
    for lo, hi in pairwise(bounds):
        _, counts = np.unique(
            (u >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1), return_counts=True
        )
        total += int((counts * (counts - 1) // 2).sum())
    return total


def _copy(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` to unit ``v``."""
    w = rng.normal(size=v.shape).astype(np.float32)
    w -= (w @ v) * v
    return (cos * v + np.sqrt(1 - cos * cos) * w / np.linalg.norm(w)).astype(np.float32)


def _flip(h: int, bits: int, rng: np.random.Generator) -> int:
    u = np.array([h], np.int64).view(np.uint64)
    for b in rng.choice(64, bits, replace=False):
        u ^= np.uint64(1) << np.uint64(b)
    return int(u.view(np.int64)[0])


def build(root: Path, n: int, dim: int) -> Path:
    """A synthetic library of ``n`` rows, one in 50 a planted copy of an earlier row of its
    chunk (path ``<i>_<kind>_of_<j>.jpg``), the FAISS file built by a writer."""
    data = root / "data"
    if data.exists():
        return data
    offline = root / "offline"  # not mounted: rows are kept, never rescanned
    Library.create(data, [offline], model="efficientnet_lite0").close()
    rng = np.random.default_rng(n)
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        for start, x in zip(range(0, n, CHUNK), synthetic(n, dim, n), strict=True):
            m = len(x)
            ph = rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64).tolist()
            hashes = [f"{start + i:032x}" for i in range(m)]
            names = [str(start + i) for i in range(m)]
            for c, i in enumerate(range(m // 2, m, 50)):
                kind, src = KINDS[c % len(KINDS)], i - m // 2
                names[i] = f"{start + i}_{kind}_of_{start + src}"
                if kind == "exact":
                    x[i], ph[i], hashes[i] = x[src], ph[src], hashes[src]
                elif kind == "phash":
                    x[i], ph[i] = _copy(x[src], 0.8, rng), _flip(ph[src], c % 5, rng)
                elif kind == "vector":
                    x[i] = _copy(x[src], rng.uniform(0.975, 0.999), rng)
                elif kind == "decoy_phash":
                    x[i], ph[i] = _copy(x[src], 0.6, rng), _flip(ph[src], 6 + c % 3, rng)
                else:
                    x[i] = _copy(x[src], 0.95, rng)
            conn.execute(
                images.insert(),
                [
                    {
                        "path": f"{offline}/{names[i]}.jpg",
                        "root_id": 1,
                        "size": 1,
                        "mtime_ns": 1,
                        "status": "indexed",
                        "model": lib.model,
                        "vector": x[i].tobytes(),
                        "content_hash": hashes[i],
                        "phash": ph[i],
                        "width": 1,
                        "height": 1,
                        "updated_at": 0.0,
                    }
                    for i in range(m)
                ],
            )
    with Library.open(data, write=True) as lib:
        lib.cache.load()  # builds and saves the FAISS file
    return data


def at_scale(keep: Path, n: int, dim: int) -> None:
    start = time.perf_counter()
    data = build(keep / f"dups{n}", n, dim)
    built = time.perf_counter() - start
    t: dict[str, float] = {}
    with Library.open(data) as lib:
        kind = lib.cache.current().kind
        s = time.perf_counter()
        with lib.engine.connect() as conn:
            rows = _load_rows(conn)
        t["rows"] = time.perf_counter() - s
        s = time.perf_counter()
        exact_pairs(rows.hashes)
        t["exact"] = time.perf_counter() - s
        s = time.perf_counter()
        phash_pairs(rows.phashes, 4)
        t["phash"] = time.perf_counter() - s
        s = time.perf_counter()
        vector_pairs(lib, 0.97)
        t["vector"] = time.perf_counter() - s
        s = time.perf_counter()
        groups = find_duplicates(lib)
        t["all"] = time.perf_counter() - s
    cmd = [sys.executable, "-c", CLI, str(data)]
    s = time.perf_counter()
    rss = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
    t["cli"] = time.perf_counter() - s
    planted: dict[str, int] = {k: 0 for k in KINDS}
    found: dict[str, int] = {k: 0 for k in KINDS}
    for g in groups:
        for m in g.members:
            if hit := re.search(r"/(\d+)_(\w+)_of_(\d+)\.jpg$", m.path):
                others = {Path(o.path).stem for o in g.members}
                found[hit.group(2)] += hit.group(3) in others and len(g.members) == 2
    with Library.open(data) as lib, lib.engine.connect() as conn:
        for (path,) in conn.execute(images.select().with_only_columns(images.c.path)):
            if hit := re.search(r"_(\w+)_of_\d+\.jpg$", path):
                planted[hit.group(1)] += 1
    stray = sum(1 for g in groups if not any("_of_" in m.path for m in g.members))
    print(
        f"| {n:,} | {kind} | {built:.0f} | {t['rows']:.1f} | {t['exact']:.2f} | "
        f"{t['phash']:.2f} | {t['vector']:.1f} | {t['all']:.1f} | {t['cli']:.1f} | {rss} | "
        + " | ".join(f"{found[k]}/{planted[k]}" for k in KINDS)
        + f" | {stray} |",
        flush=True,
    )


CLI = r"""
import subprocess, sys
p = subprocess.run([sys.executable, "-m", "imgindex", "--data-dir", sys.argv[1], "duplicates",
                    "--json"], check=True, capture_output=True)
import resource
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--caltech", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--keep", type=Path, help="build libraries here and keep them")
    args = ap.parse_args()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="imgindex-dups-"))
    if args.caltech:
        caltech(keep)
    if args.sizes:
        print(
            "\n| images | index | build s | rows s | exact s | pHash s | vector s | "
            "find_duplicates s | CLI process s | CLI peak RSS MB | "
            + " | ".join(f"{k} found" for k in KINDS)
            + " | other groups |"
        )
        print("|---" * (11 + len(KINDS)) + "|")
        for n in args.sizes:
            at_scale(keep, n, args.dim)


if __name__ == "__main__":
    main()
