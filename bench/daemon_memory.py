"""Daemon memory and start-up by library size, with the default model.

    python bench/daemon_memory.py [--sizes 100000 1000000] [--keep DIR] [--files 20]

Uses the synthetic libraries of ``bench/query.py`` (built here, or reused from ``--keep``): n
stored vectors under a root that is not mounted (kept, never rescanned) and one watched folder.
Starts `imgindex daemon`, waits until it watches (the first drain of a library without clusters
runs a consolidation), drops ``--files`` real photos into the watched folder, waits until they
are indexed, asks the daemon once over its socket for a photo outside the library (which loads
the query service's model), and reports the daemon's RSS at each step and its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from freshness import photos, wait_until
from query import build

from imgindex.client import ask_similar
from imgindex.library import Library
from imgindex.paths import LibraryPaths


def mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def status(data: Path) -> dict:
    with Library.open(data) as lib:
        return lib.status()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="imgindex-memory-"))
    print(
        "| vectors | ready s | RSS watching MB | after photos MB | after a query MB "
        "| anon / file-backed MB | peak MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        if not (tmp / str(n) / "data").exists():
            build(tmp / str(n), n, args.dim)
        r = measure(tmp / str(n), args.files)
        print(
            f"| {n:,} | {r['ready']:.1f} | {r['watching']:.0f} | {r['ingested']:.0f} | "
            f"{r['VmRSS']:.0f} | {r['RssAnon']:.0f} / {r['RssFile']:.0f} | {r['VmHWM']:.0f} |",
            flush=True,
        )


def measure(root: Path, files: int) -> dict[str, float]:
    data, watched = root / "data", root / "photos"
    for old in watched.glob("new-*.jpg"):
        old.unlink()
    before = status(data)["indexed"]
    start = time.monotonic()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "daemon"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: status(data)["daemon"]["state"] == "watching", 1800, 0.5)
        ready = time.monotonic() - start
        time.sleep(5)
        watching = mem(daemon.pid)["VmRSS"]
        for i, img in enumerate(photos(files + 1)):
            img.save(watched / f"new-{i}.jpg" if i else root / "outside.jpg")
        wait_until(lambda: status(data)["indexed"] >= before + files, 600, 0.5)
        time.sleep(3)
        ingested = mem(daemon.pid)["VmRSS"]
        wait_until(lambda: LibraryPaths(data).socket.exists(), 120, 0.2)
        assert ask_similar(LibraryPaths(data), root / "outside.jpg", 10)
        return {**mem(daemon.pid), "ready": ready, "watching": watching, "ingested": ingested}
    finally:
        daemon.terminate()
        daemon.wait(120)


if __name__ == "__main__":
    main()
