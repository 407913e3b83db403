"""`imgindex similar` on a photo outside the library: cold (the CLI loads the model) vs warm (a
running daemon answers over its socket with the model already loaded).

    python bench/warm_query.py [--files 50] [--model efficientnet_lite0]

Builds a library of ``--files`` caltech-dev images (../shared/corpus) in a temporary folder,
starts `imgindex daemon` and waits until they are indexed, then times, for a caltech photo that
is not in the library: in-process `ask_similar` round trips (20), `python -m imgindex similar`
as a fresh process with the daemon running (5), the same on an indexed photo (the CLI's floor:
no embedding at all, 5), and, after stopping the daemon, the cold local path (3).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgindex.client import ask_similar, ping
from imgindex.library import Library
from imgindex.paths import LibraryPaths

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "caltech-dev"


def build(root: Path, n: int, model: str) -> tuple[Path, Path, Path]:
    """A library of N corpus photos; returns (data dir, a photo outside it, one inside)."""
    files = sorted(CORPUS.rglob("*.jpg"))
    chosen = files[:: max(1, len(files) // n)][:n]
    outside = next(f for f in reversed(files) if f not in chosen)
    photos = root / "photos"
    for i, f in enumerate(chosen):
        dest = photos / f.parent.name / f"{i:03d}_{f.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    data = root / "data"
    Library.create(data, [photos], model=model).close()
    return data, outside, next(photos.rglob("*.jpg"))


def wait_indexed(data: Path, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Library.open(data) as lib:
            s = lib.status()
        if s["indexed"] == n and s["queued"] == 0 and s["pending"] == 0 and ping(lib.paths):
            return
        time.sleep(0.5)
    raise TimeoutError(f"library not indexed after {timeout} s: {s}")


def cli_ms(data: Path, photo: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "imgindex", "--data-dir", str(data), "similar", str(photo)],
            check=True,
            capture_output=True,
        )
        times.append((time.perf_counter() - start) * 1000)
    return times


def in_process_ms(data: Path, photo: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        assert ask_similar(LibraryPaths(data), photo, 10), "the daemon did not answer"
        times.append((time.perf_counter() - start) * 1000)
    return times


def row(name: str, times: list[float]) -> str:
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else max(times)
    return f"| {name} | {len(times)} | {statistics.median(times):.0f} | {p90:.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    if not CORPUS.is_dir():
        sys.exit(f"skipped: {CORPUS} is absent (../shared beside the repository)")
    root = Path(tempfile.mkdtemp(prefix="imgindex-warm-"))
    data, outside, inside = build(root, args.files, args.model)
    log = open(root / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "daemon"], stderr=log
    )
    try:
        wait_indexed(data, args.files)
        warm = in_process_ms(data, outside, 20)
        warm_cli = cli_ms(data, outside, 5)
        floor = cli_ms(data, inside, 5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    cold = cli_ms(data, outside, 3)
    print(f"model {args.model}, {args.files} images, query {outside.name} (not in the library)\n")
    print("| `similar` on a photo outside the library | runs | median ms | p90 ms |")
    print("|---|---|---|---|")
    print(row("cold: fresh CLI process, no daemon (loads the model)", cold))
    print(row("warm: in-process `ask_similar` round trip", warm))
    print(row("warm: fresh CLI process, daemon answers", warm_cli))
    print(row("floor: fresh CLI process on an indexed photo", floor))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
