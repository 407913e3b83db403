"""The embedding service on loopback: what each payload format costs, how many images/s the
service reaches with concurrent clients, and ingest locally against ingest through it.

    python bench/embed_service.py [--images 256] [--ingest 200] [--device cpu]

Tables: (1) per payload format (raw uint8, JPEG q95/q90): bytes per image, the client's encode
and the server's decode per image, one HTTP batch of 32 on loopback against a ``thumbnail``
service (the model costs ~nothing there, so this is the transfer cost), and the cosine of the
vectors to the raw ones with efficientnet_lite0; (2) images/s of an efficientnet_lite0 service
with 1, 2 and 4 concurrent clients sending raw batches of 32; (3) ``Ingestor.run`` on the same
files (caltech-dev) with the local model and through the service, with decode-only and
model-only rates beside them. Servers are real ``imgindex embed-server`` processes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgindex.decode import decode_for_model
from imgindex.embedclient import ChosenEmbedder, RemoteEmbedder
from imgindex.embedwire import decode_batch, encode_batch
from imgindex.ingest import Ingestor
from imgindex.library import Library
from imgindex.models import get_spec, load_embedder

#: ../shared beside the checkout (also from a git worktree one level further down)
CORPUS = next(
    (
        p / "shared" / "corpus" / "caltech-dev"
        for p in Path(__file__).resolve().parents[2:4]
        if (p / "shared" / "corpus" / "caltech-dev").is_dir()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "caltech-dev",
)
BATCH = 32


def start_server(model: str, device: str) -> tuple[subprocess.Popen, str]:
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "embed-server", "--port", "0", "--model", model,
         "--device", device],
        stderr=log, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", Path(log.name).read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.2)
    raise SystemExit(f"embed-server did not start: {Path(log.name).read_text()}")


def photos(n: int) -> list[Path]:
    files = sorted(CORPUS.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"{CORPUS} is absent: the bench needs ../shared/corpus/caltech-dev")
    return files[:: max(1, len(files) // n)][:n]


def per_image_ms(fn, n: int, repeats: int = 3) -> float:
    best = min(_timed(fn) for _ in range(repeats))
    return 1e3 * best / n


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def payloads(pixels: np.ndarray, device: str) -> None:
    proc, url = start_server("thumbnail", "cpu")
    try:
        remote = RemoteEmbedder(url, get_spec("thumbnail"))
        remote.info()
        model = load_embedder("efficientnet_lite0", device=device)
        ref = model.embed(pixels)
        print("\n| payload | KiB/image | encode ms/image | decode ms/image | "
              "HTTP batch of 32, ms/image | cosine to raw, min / median |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for fmt, quality in (("raw", 0), ("jpeg", 95), ("jpeg", 90)):
            body = encode_batch(pixels, fmt, quality or 90)
            enc = per_image_ms(
                lambda f=fmt, q=quality: encode_batch(pixels, f, q or 90), len(pixels)
            )
            dec = per_image_ms(
                lambda b=body, f=fmt: decode_batch(b, f, len(pixels), 224), len(pixels)
            )
            remote_fmt = _Posting(url, fmt, quality or 90)
            http_ms = per_image_ms(lambda r=remote_fmt: r.send(pixels), len(pixels))
            back = decode_batch(body, fmt, len(pixels), 224)
            cos = (model.embed(back) * ref).sum(1)
            name = "raw uint8" if fmt == "raw" else f"JPEG q{quality}"
            print(f"| {name} | {len(body) / len(pixels) / 1024:.1f} | {enc:.3f} | {dec:.3f} | "
                  f"{http_ms:.2f} | {cos.min():.4f} / {np.median(cos):.4f} |")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait()


class _Posting:
    """Batches of 32 in one payload format on one keep-alive connection, as the client does."""

    def __init__(self, url: str, fmt: str, quality: int) -> None:
        import http.client

        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port))
        self.fmt, self.quality = fmt, quality

    def send(self, pixels: np.ndarray) -> None:
        from imgindex.embedwire import COUNT_HEADER, EMBED_PATH, FORMAT_HEADER, MODEL_HEADER

        for start in range(0, len(pixels), BATCH):
            chunk = pixels[start : start + BATCH]
            headers = {MODEL_HEADER: "thumbnail", FORMAT_HEADER: self.fmt,
                       COUNT_HEADER: str(len(chunk))}  # fmt: skip
            self.conn.request(
                "POST", EMBED_PATH, encode_batch(chunk, self.fmt, self.quality), headers
            )
            resp = self.conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()


def concurrency(pixels: np.ndarray, device: str) -> None:
    proc, url = start_server("efficientnet_lite0", device)
    try:
        print(
            f"\n| clients | images/s (efficientnet_lite0 service on {device}, raw batches of 32) |"
        )
        print("|---|---|")
        for clients in (1, 2, 4):
            remotes = [RemoteEmbedder(url, get_spec("efficientnet_lite0")) for _ in range(clients)]
            batch = pixels[:BATCH]
            for r in remotes:
                r.embed(batch)  # connected, warm
            rounds = 4  # batches per client
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda r, b=batch: [r.embed(b) for _ in range(4)], remotes))
            rate = clients * rounds * BATCH / (time.perf_counter() - start)
            print(f"| {clients} | {rate:.0f} |")
    finally:
        proc.terminate()
        proc.wait()


def ingest(files: list[Path], device: str) -> None:
    spec = get_spec("efficientnet_lite0")
    local = load_embedder(spec.name, device=device)
    data = [f.read_bytes() for f in files]
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        px = np.stack(list(pool.map(lambda b: decode_for_model(b).pixels, data)))
    decode_rate = len(files) / (time.perf_counter() - t)
    local.embed_labelled(px[:BATCH])  # warm
    model_rate = len(px) / _timed(lambda: local.embed_labelled(px))
    proc, url = start_server(spec.name, device)
    try:
        print("\n| ingest (efficientnet_lite0, same files, fresh library) | images/s |")
        print("|---|---|")
        print(f"| decode only (2 threads) | {decode_rate:.0f} |")
        print(f"| model only (in process, one batch) | {model_rate:.0f} |")
        for name, make in (
            ("local model", lambda: local),
            ("service on loopback", lambda: ChosenEmbedder(
                spec, lambda: local, RemoteEmbedder(url, spec), "wait")),
        ):  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp) / "photos"
                root.mkdir()
                for i, f in enumerate(files):
                    (root / f"{i:05d}.jpg").symlink_to(f)
                Library.create(Path(tmp) / "data", [root], k="8", model=spec.name).close()
                with Library.open(Path(tmp) / "data", write=True) as lib:
                    report = Ingestor(lib, batch_size=32, embedder=make()).run()
                print(f"| {name}, end to end | {report.embedded / report.seconds:.0f} |")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--ingest", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    files = photos(max(args.images, args.ingest))
    pixels = np.stack([decode_for_model(f.read_bytes()).pixels for f in files[: args.images]])
    print(f"{len(pixels)} caltech-dev photos, decoded to 224 x 224")
    payloads(pixels, args.device)
    concurrency(pixels, args.device)
    ingest(files[: args.ingest], args.device)


if __name__ == "__main__":
    main()
