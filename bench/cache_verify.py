"""What tying the FAISS file to its library and content costs: saving with the checksum computed
while writing (beside a plain ``faiss.write_index``), and verifying a file before mapping it,
in full (BLAKE2b over the file) and by its recorded stamp (inode, mtime, ctime).

    python bench/cache_verify.py [--n 100000] [--dim 1280] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from imgindex.vindex import MMAP_FLAGS, FileRecord, VectorIndex


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vi = VectorIndex(args.dim, seq=1)
    vi.add(np.arange(args.n, dtype=np.int64), x)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        rows, size = measure(vi, Path(tmp), args.repeats)
    print(f"{args.n:,} x {args.dim} float32, flat: a {size / 1e6:.0f} MB file")
    print(f"| step (median of {args.repeats}) | ms |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.3f} |")


def measure(vi: VectorIndex, folder: Path, repeats: int) -> tuple[list[tuple[str, float]], int]:
    path = folder / "vectors.1.faiss"
    saved: list[FileRecord] = []

    def plain() -> None:
        faiss.write_index(vi.index, str(folder / "plain.faiss"))
        with open(folder / "plain.faiss", "rb+") as fh:
            os.fsync(fh.fileno())

    def save() -> None:
        written, record = vi.write_temp(folder, "bench")
        vi.install(written, path)
        saved.append(record.stamped(path))

    rows = [("faiss.write_index + fsync (no checksum)", timed(plain, repeats))]
    rows.append(("save: write + BLAKE2b while writing, fsync, rename", timed(save, repeats)))
    record = saved[-1]
    rows.append(
        (
            "verify by stamp (a read command; a stat)",
            timed(lambda: record.mismatch(path, "bench"), repeats),
        )
    )
    rows.append(
        (
            "verify in full: BLAKE2b over the file (stamp changed; `check`)",
            timed(lambda: record.mismatch(path, "bench", full=True), repeats),
        )
    )
    rows.append(
        ("memory-map the file", timed(lambda: faiss.read_index(str(path), MMAP_FLAGS), repeats))
    )
    return rows, os.path.getsize(path)


if __name__ == "__main__":
    main()
