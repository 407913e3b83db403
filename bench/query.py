"""Queries at scale: cold `imgindex similar`, in-process latency and recall, by library size.

    python bench/query.py [--sizes 10000 100000 1000000] [--dim 1280] [--keep DIR]

Builds synthetic libraries through the core: rows with clustered unit vectors in SQLite (see
``synthetic``) under a root that is not mounted (so a daemon keeps them), plus one real photo
whose row is indexed; then the writer opens the library,
which builds and saves the FAISS index of the kind the size calls for. Reports, per size:

- the index kind and its build time (training, adding, nprobe tuning);
- wall time of `python -m imgindex similar PHOTO --json` as a fresh process (median of 5);
- in-process `Library.search` p50/p99 over 200 stored vectors as queries (a reader process:
  memory-mapped file, candidates re-scored from SQLite) and its recall@10 against exact search
  over every stored vector;
- peak RSS (VmHWM) of that reader and of a writer that loads the index into memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgindex.db.images import indexed_ids, iter_vectors, vector_to_blob, vectors_for
from imgindex.db.schema import images
from imgindex.library import Library

CHUNK = 20_000


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors with structure at two scales, like image embeddings: 100 themes,
    n/100 scenes around them, members around a scene (cosine ~0.65 within a scene, ~0.43
    within a theme, ~0 across), generated chunk by chunk (same seed, same vectors)."""
    rng = np.random.default_rng(seed)
    themes = rng.normal(size=(100, dim)).astype(np.float32)
    scenes = themes[rng.integers(0, 100, max(1, n // 100))]
    scenes += 0.7 * rng.normal(size=scenes.shape).astype(np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = scenes[rng.integers(0, len(scenes), m)]
        x = x + 0.9 * rng.normal(size=(m, dim)).astype(np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def build(root: Path, n: int, dim: int) -> tuple[Path, Path, float]:
    """The library in ``root`` (made unless it exists), its real photo, and the seconds the
    writer took to build the index (NaN when reused)."""
    photo = root / "photos" / "query.jpg"
    if (root / "data").exists():
        return root / "data", photo, float("nan")
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (120, 30, 200)).save(photo)
    data = root / "data"
    offline = root / "offline"  # a root that is not mounted: its rows are kept, never rescanned
    Library.create(data, [photo.parent, offline], model="efficientnet_lite0").close()
    with Library.open(data, write=True) as lib, lib.engine.begin() as conn:
        now = time.time()
        first = None
        for start, x in zip(range(0, n, CHUNK), synthetic(n, dim, n), strict=True):
            first = x[0] if first is None else first
            conn.execute(
                images.insert(),
                [
                    {
                        "host": lib.host,
                        "path": f"{offline}/{start + i}.jpg",
                        "root_id": 2,
                        "size": 1,
                        "mtime_ns": 1,
                        "status": "indexed",
                        "model": lib.model,
                        "vector": x[i].tobytes(),
                        "updated_at": now,
                    }
                    for i in range(len(x))
                ],
            )
        st = photo.stat()
        conn.execute(
            images.insert().values(
                host=lib.host,
                path=str(photo),
                root_id=1,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                status="indexed",
                model=lib.model,
                updated_at=now,
                vector=vector_to_blob(first),
            )
        )
    start = time.perf_counter()
    with Library.open(data, write=True) as lib:
        lib.cache.load()  # builds and saves the FAISS file
    return data, photo, time.perf_counter() - start


def cold_cli(data: Path, photo: Path) -> tuple[float, float]:
    """Median wall time of a fresh `imgindex similar` process, and of a process that only
    imports what that command imports (the floor no index can go under)."""
    similar = [
        sys.executable,
        "-m",
        "imgindex",
        "--data-dir",
        str(data),
        "similar",
        str(photo),
        "--json",
    ]
    imports = [sys.executable, "-c", "import imgindex.cli, imgindex.query"]
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(5):
        for i, cmd in enumerate((similar, imports)):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


READER = r"""
import json, sys, time
import numpy as np
from imgindex.library import Library
data, dim = sys.argv[1], int(sys.argv[2])
queries = np.load(sys.argv[3])
with Library.open(__import__("pathlib").Path(data)) as lib:
    kind = lib.cache.current().kind
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append([m.path for m in lib.search(q, 11)])
        lat.append((time.perf_counter() - t) * 1000)
rss = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"kind": kind, "lat": lat, "found": found, "rss": rss}))
"""


def in_process(data: Path, dim: int, n: int) -> dict:
    """Latency, recall@10 and RSS of a reader process; exact answers computed here."""
    rng = np.random.default_rng(1)
    with Library.open(data) as lib, lib.engine.connect() as conn:
        pick = np.sort(rng.choice(indexed_ids(conn), 200, replace=False))
        ids, queries = vectors_for(conn, pick.tolist(), dim)
        best = np.full((len(queries), 11), -np.inf, np.float32)
        best_ids = np.full((len(queries), 11), -1, np.int64)
        for chunk_ids, x, _ in iter_vectors(conn, dim):
            s = queries @ x.T
            top = np.argsort(-s, axis=1)[:, :11]
            s2 = np.concatenate([best, np.take_along_axis(s, top, 1)], 1)
            i2 = np.concatenate([best_ids, chunk_ids[top]], 1)
            order = np.argsort(-s2, axis=1)[:, :11]
            best, best_ids = np.take_along_axis(s2, order, 1), np.take_along_axis(i2, order, 1)
        paths = dict(
            conn.execute(
                images.select()
                .with_only_columns(images.c.id, images.c.path)
                .where(images.c.id.in_(np.unique(best_ids).tolist()))
            ).all()
        )
    qfile = data / "queries.npy"
    np.save(qfile, queries)
    out = subprocess.run(
        [sys.executable, "-c", READER, str(data), str(dim), str(qfile)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    import json

    res = json.loads(out)
    recall = []
    for row, got in enumerate(res["found"]):
        own = ids[row]
        truth = {paths[int(i)] for i in best_ids[row] if i != own}
        got = [p for p in got if p != paths.get(int(own))][:10]
        recall.append(len(truth & set(got)) / 10)
    return {
        "kind": res["kind"],
        "p50": float(np.percentile(res["lat"], 50)),
        "p99": float(np.percentile(res["lat"], 99)),
        "recall": float(np.mean(recall)),
        "reader_rss": res["rss"],
    }


WRITER = r"""
import sys
from pathlib import Path
from imgindex.library import Library
with Library.open(Path(sys.argv[1]), write=True) as lib:
    lib.cache.load()
    print([int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def writer_rss(data: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(data)], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--keep", type=Path, help="build libraries here and keep them")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="imgindex-query-"))
    print(
        "| vectors | index | build s | cold `imgindex similar` s | imports alone s "
        "| search p50 ms | p99 ms | recall@10 | reader RSS MB | writer RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        data, photo, built = build(tmp / str(n), n, args.dim)
        cold, floor = cold_cli(data, photo)
        r = in_process(data, args.dim, n)
        w = writer_rss(data)
        print(
            f"| {n:,} | {r['kind']} | {built:.1f} | {cold:.2f} | {floor:.2f} | {r['p50']:.1f} | "
            f"{r['p99']:.1f} | {r['recall']:.3f} | {r['reader_rss']:.0f} | {w:.0f} |",
            flush=True,
        )
    print(
        f"(this process peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        " MB)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
