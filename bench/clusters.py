"""Clustering at scale: cost of one incremental update and of a consolidation, by library size.

    python bench/clusters.py [--sizes 10000 100000 1000000] [--keep DIR] [--batch 32]

Uses the synthetic libraries of ``bench/query.py`` (built here, or reused from ``--keep``). Per
size, with k = 50 (a first consolidation, when due, runs untimed after the batches):

- one batch as the ingest writes it (median of 20): ``organize.after_batch`` on ``--batch`` new
  vectors (``partial_fit`` + assignment + the state saved) inside the batch's transaction, plus
  the writer's FAISS index replaying the batch from the changes log;
- one drain when nothing is due (a count, and at most ``REASSIGN_MAX`` re-assignments);
- one consolidation (k-means++ on a sample, every image re-assigned, ids matched).

The drain and the consolidation are rolled back; the batches stay (640 rows per run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from query import build, synthetic

from imgindex import organize
from imgindex.db import meta
from imgindex.db.schema import images
from imgindex.library import Library


def timed(lib: Library, fn, repeats: int) -> float:
    """Median seconds of ``fn(conn)`` in a transaction that is rolled back."""
    times = []
    for _ in range(repeats):
        with lib.engine.connect() as conn:
            trans = conn.begin()
            start = time.perf_counter()
            fn(conn)
            times.append(time.perf_counter() - start)
            trans.rollback()
    return statistics.median(times)


def one_batch(lib: Library, batch: int, dim: int, seed: int) -> float:
    """A batch of new rows: the clusters updated in its transaction, then the index replayed."""
    offline = lib.roots()[1]  # the unmounted root of bench/query.py: the rows stay
    times = []
    for r in range(20):
        x = next(synthetic(batch, dim, seed + r))
        prefix = f"{offline}/new-{time.time_ns()}-"
        with lib.engine.begin() as conn:
            rows = [
                {
                    "path": f"{prefix}{i}.jpg",
                    "host": lib.host,
                    "root_id": 2,
                    "size": 1,
                    "mtime_ns": 1,
                    "status": "indexed",
                    "model": lib.model,
                    "vector": v.tobytes(),
                    "updated_at": 0.0,
                }
                for i, v in enumerate(x)
            ]
            conn.execute(images.insert(), rows)
            ids = np.array(
                conn.execute(
                    images.select()
                    .with_only_columns(images.c.id)
                    .where(images.c.path.like(f"{prefix}%"))
                )
                .scalars()
                .all()
            )
            start = time.perf_counter()
            organize.after_batch(conn, lib.k_setting, dim, ids, x, lib.cache.index.size + batch)
        lib.cache.catch_up()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--keep", type=Path, help="libraries of bench/query.py --keep, or made here")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="imgindex-clusters-"))
    print(f"| images | one batch of {args.batch} ms | drain (nothing due) ms | consolidation s |")
    print("|---|---|---|---|")
    for n in args.sizes:
        data = tmp / str(n) / "data"
        if not data.exists():
            build(tmp / str(n), n, args.dim)
        with Library.open(data, write=True) as lib:
            with lib.engine.begin() as conn:
                meta.set_k_setting(conn, "50")
            lib.k_setting = "50"
            lib.cache.load()
            batch = one_batch(lib, args.batch, args.dim, n)
            with lib.engine.begin() as conn:  # consolidates when due (first run, growth)
                organize.after_drain(conn, "50", args.dim)
            drain = timed(lib, lambda c: organize.after_drain(c, "50", args.dim), 3)
            full = timed(lib, lambda c: organize.consolidate(c, "50", args.dim), 1)
        print(f"| {n:,} | {batch * 1000:.1f} | {drain * 1000:.0f} | {full:.1f} |", flush=True)


if __name__ == "__main__":
    main()
