"""Ingest throughput, side by side, in one run (images/s; ratios are what count here).

    python bench/ingest.py [--small 400] [--camera 60] [--model efficientnet_lite0]

Rows: the tutorials' loop (one image at a time: full-size PIL decode, resize to 224, model
forward), imgindex end to end (walk, decode, embed, write, cluster: `Ingestor.run` on a fresh
library), model only (random pixels, best batch size), decode only (decode_for_model in
threads, best thread count). Corpora: small JPEGs from ../shared/corpus/caltech-dev (~300 px)
and "camera photos": the same pictures saved as 4000x3000 JPEG, quality 90.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from imgindex.decode import decode_for_model
from imgindex.ingest import Ingestor
from imgindex.library import Library
from imgindex.models import load_embedder

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "caltech-dev"


def corpora(tmp: Path, n_small: int, n_camera: int) -> dict[str, list[Path]]:
    files = sorted(CORPUS.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"{CORPUS} is absent: the bench needs ../shared/corpus/caltech-dev")
    small = files[:: max(1, len(files) // n_small)][:n_small]
    camera_dir = tmp / "camera"
    camera_dir.mkdir()
    camera = []
    for i, f in enumerate(files[:: max(1, len(files) // n_camera)][:n_camera]):
        out = camera_dir / f"cam{i:04d}.jpg"
        Image.open(f).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(out, quality=90)
        camera.append(out)
    return {"small JPEG": small, "camera 12 MP": camera}


def tutorial_loop(files: list[Path], model: str) -> float:
    """As the notebooks do it: the same network and weights, as published, in PyTorch's default
    layout (NCHW), one image at a time, full decode, resize to 224, forward."""
    import torch

    plain = load_embedder(model)
    body = plain.body.to(memory_format=torch.contiguous_format)
    if model == "efficientnet_lite0":  # as published: imgindex folds batch norms and padding
        from efficientnet_lite_pytorch import EfficientNet

        from imgindex.models.efficientnet import default_weights
        from imgindex.models.runtime import load_weights

        net = EfficientNet.from_name("efficientnet-lite0")
        load_weights(net, default_weights(), model)
        net.eval()
        body = lambda x: net.extract_features(x).mean(dim=(2, 3))  # noqa: E731
    mean, std = plain._mean, plain._std  # the model's own input scaling
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            img = Image.open(f).convert("RGB").resize((224, 224))
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()
            feats = body((x - mean) / std)
            torch.nn.functional.normalize(feats, dim=1)
    return len(files) / (time.perf_counter() - start)


def end_to_end(files: list[Path], model: str, tmp: Path) -> float:
    root = tmp / f"lib-{time.monotonic_ns()}"
    (root / "photos").mkdir(parents=True)
    for f in files:  # a root of links, so the walk sees exactly these files
        (root / "photos" / f"{f.parent.name}-{f.name}").symlink_to(f)
    lib = Library.create(root / "data", [root / "photos"], model=model)
    lib.close()
    with Library.open(root / "data", write=True) as lib:
        ingestor = Ingestor(lib)
        ingestor.lib.cache.load()  # warm-up outside the timing, as a daemon would be
        ingestor.embedder().embed(np.zeros((1, 224, 224, 3), np.uint8))  # the model is loaded
        start = time.perf_counter()
        report = ingestor.run()
        took = time.perf_counter() - start
    assert report.embedded == len(files), report
    return len(files) / took


def model_only(embedder, n: int = 64) -> tuple[float, int]:
    best = (0.0, 0)
    rng = np.random.default_rng(0)
    from imgindex.models import runtime

    chunk = runtime.CPU_CHUNK
    for batch in (1, 2, 3, 4, 8, 16, 32):
        runtime.CPU_CHUNK = batch  # one forward pass per batch (the embedder chunks by it)
        x = rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
        embedder.embed(x)
        start = time.perf_counter()
        for _ in range(max(1, n // batch)):
            embedder.embed(x)
        rate = max(1, n // batch) * batch / (time.perf_counter() - start)
        best = max(best, (rate, batch))
    runtime.CPU_CHUNK = chunk
    return best


def decode_only(files: list[Path]) -> tuple[float, int]:
    best = (0.0, 0)
    for workers in (1, 2, 4):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda f: decode_for_model(f.read_bytes()), files))
        best = max(best, (len(files) / (time.perf_counter() - start), workers))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=400)
    ap.add_argument("--camera", type=int, default=60)
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imgindex-bench-"))
    sets = corpora(tmp, args.small, args.camera)
    embedder = load_embedder(args.model)
    print(f"model {args.model} on {embedder.device}")
    print(
        "| corpus | files | tutorial loop | imgindex | × tutorial | model only (batch) "
        "| decode only (threads) | imgindex / min(model, decode) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, files in sets.items():
        tut = tutorial_loop(files, args.model)
        ours = end_to_end(files, args.model, tmp)
        m, mb = model_only(embedder)
        d, dw = decode_only(files)
        print(
            f"| {name} | {len(files)} | {tut:.1f} | {ours:.1f} | {ours / tut:.2f} "
            f"| {m:.1f} ({mb}) | {d:.1f} ({dw}) | {ours / min(m, d):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
