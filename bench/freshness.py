"""Freshness of an idle daemon, and what it costs when idle.

    python bench/freshness.py [--files 20] [--model efficientnet_lite0] [--idle 60]

Starts `imgindex daemon` (default debounce) on a fresh library in a temporary folder, then
drops photos into a watched folder one at a time. For each, the time from the file's close
until `similar` (the same core function the CLI calls, in a fresh library handle each poll, as
a new CLI process would) returns it. Then it measures the daemon's CPU over ``--idle`` seconds
of idleness (from /proc/PID/stat) and its RSS. Uses ../shared/corpus/caltech-dev when present.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from imgindex.library import Library
from imgindex.query import similar_to

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "caltech-dev"


def photos(n: int) -> list[Image.Image]:
    files = sorted(CORPUS.rglob("*.jpg"))[:: max(1, 1286 // n)][:n] if CORPUS.is_dir() else []
    if files:
        return [Image.open(f).convert("RGB") for f in files]
    return [
        Image.effect_mandelbrot((320, 240), (-2 + i / n, -1.2, 1, 1.2), 60).convert("RGB")
        for i in range(n)
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until(predicate, timeout: float, poll: float = 0.05) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(poll)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imgindex-fresh-"))
    root, data, seeds = tmp / "photos", tmp / "data", tmp / "photos" / "seed"
    seeds.mkdir(parents=True)
    pictures = photos(args.files)
    for i, img in enumerate(pictures):
        img.save(seeds / f"seed{i:03d}.jpg", quality=95)
    cmd = [sys.executable, "-m", "imgindex", "--data-dir", str(data)]
    subprocess.run([*cmd, "init", str(root), "--model", args.model], check=True)
    subprocess.run([*cmd, "index"], check=True, capture_output=True)
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    daemon = subprocess.Popen([*cmd, "daemon"], stderr=log)
    try:
        time.sleep(8)  # model loaded, start-up scan done
        drop = root / "incoming"
        drop.mkdir()
        latencies = []
        for i, img in enumerate(pictures):
            target = drop / f"new{i:03d}.jpg"
            img.save(target, quality=80)  # different bytes, same picture: must be embedded
            closed = time.monotonic()
            query = seeds / f"seed{i:03d}.jpg"

            def returned(target: Path = target, query: Path = query) -> bool:
                with Library.open(data) as lib:
                    return str(target) in {m.path for m in similar_to(lib, query, k=5)}

            wait_until(returned, 60)
            latencies.append(time.monotonic() - closed)
            time.sleep(2)
        time.sleep(5)
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - t0) * 100
        rss = rss_mb(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(
        f"| model | files | median s | p95 s | max s | idle CPU % of a core ({args.idle:g} s)"
        " | RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.model} | {len(latencies)} | {statistics.median(latencies):.2f} | {p95:.2f} "
        f"| {latencies[-1]:.2f} | {idle_cpu:.2f} | {rss:.0f} |"
    )


if __name__ == "__main__":
    main()
