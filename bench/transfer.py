"""What copying a library into PostgreSQL costs (``imgindex.db.transfer.copy_library``, the core of
``imgindex migrate --to``): a synthetic SQLite library of N indexed images (random unit vectors)
copied into an empty database, with the time of each phase and the peak RSS of the process.

    python bench/transfer.py --to postgresql://USER@/DB?host=/SOCKET [--n 100000] [--dim 1280]
                             [--keep LIBRARY.db]

The database must be empty (each run needs a fresh one). ``--keep`` builds the SQLite library
at that path once and reuses it.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from imgindex.db import meta, migrate, roots
from imgindex.db.engine import make_engine, snapshot
from imgindex.db.schema import images
from imgindex.db.transfer import copy_library, figures


def build(path: Path, n: int, dim: int) -> None:
    """A library of ``n`` indexed images of ``dim``-d vectors at ``path`` (SQLite)."""
    engine = make_engine(path)
    migrate.upgrade(engine, path)
    rng = np.random.default_rng(0)
    with engine.begin() as conn:
        meta.set_model(conn, "synthetic", dim)
        meta.set_library_id(conn, "bench")
        root = roots.add_root(conn, Path("/photos"))
        for start in range(0, n, 5_000):
            x = rng.standard_normal((min(5_000, n - start), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = [
                {
                    "path": f"/photos/{start + i:08d}.jpg",
                    "root_id": root,
                    "size": 1,
                    "mtime_ns": 1,
                    "status": "indexed",
                    "model": "synthetic",
                    "vector": v.tobytes(),
                    "updated_at": 0.0,
                }
                for i, v in enumerate(x)
            ]
            conn.execute(insert(images), rows)
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", required=True, help="an empty PostgreSQL database's URL")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--keep", type=Path, default=Path("/tmp/imgindex-bench-transfer.db"))
    args = ap.parse_args()
    if not args.keep.exists():
        start = time.perf_counter()
        build(args.keep, args.n, args.dim)
        print(f"built {args.keep} in {time.perf_counter() - start:.1f} s")
    source, target = make_engine(args.keep), make_engine(args.to)
    with snapshot(source) as conn:
        start = time.perf_counter()
        figures(conn)
        read = time.perf_counter() - start
    phases: dict[str, float] = {}
    mark = [time.perf_counter(), "schema"]

    def progress(stage: str, _n: int) -> None:
        if stage != mark[1]:
            now = time.perf_counter()
            phases[str(mark[1])] = phases.get(str(mark[1]), 0.0) + now - float(mark[0])
            mark[:] = [now, stage]

    start = time.perf_counter()
    result = copy_library(source, target, progress)
    total = time.perf_counter() - start
    phases[str(mark[1])] = time.perf_counter() - float(mark[0])  # verifying, and the commit
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = args.keep.stat().st_size / 1e6
    print(f"{result.source.vectors:,} vectors x {args.dim}, SQLite file {size:.0f} MB")
    print(f"| phase | s |\n|---|---|\n| figures of the source alone | {read:.1f} |")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| copy_library in all | {total:.1f} |\n\npeak RSS {rss:.0f} MB; {result.summary()}")


if __name__ == "__main__":
    main()
