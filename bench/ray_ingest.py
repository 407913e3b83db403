"""Ingest the same files three ways in one run: the local model, the embedding service on
loopback, and ``index --ray`` on a two-node Ray cluster on this machine; where the time goes.

    python bench/ray_ingest.py [--images 160] [--model efficientnet_lite0] [--node-cpus 1]

Each way indexes the same caltech-dev photos into a fresh library (symlinks to the corpus).
Local and service passes are timed by stage in the writer: ``model`` is the time in the
embedder's call (for the service: the HTTP round trip, transfer included), ``commit`` the
time in ``Ingestor.store`` (SQLite, clusters, FAISS), and ``decode wait`` the rest (waiting for
the decode threads). A Ray pass reports its own: ``prepare`` and ``model`` are seconds summed
over the workers' tasks and actors (CPU-seconds on the nodes, which overlap), ``wait`` the
writer's time waiting for batches, ``commit`` its time in ``Ingestor.store``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embed_service import photos, start_server

from imgindex.embedclient import ChosenEmbedder, RemoteEmbedder
from imgindex.ingest import Ingestor, Prepared
from imgindex.library import Library
from imgindex.models import get_spec, load_embedder


class TimedIngestor(Ingestor):
    """An Ingestor that adds up the writer's time in the model and in commits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_s = 0.0
        self.commit_s = 0.0

    def _embed(self, batch: list[Prepared]) -> None:
        t = time.perf_counter()
        super()._embed(batch)
        self.model_s += time.perf_counter() - t

    def store(self, batch: list[Prepared]) -> None:
        t = time.perf_counter()
        super().store(batch)
        self.commit_s += time.perf_counter() - t


def fresh_library(tmp: Path, files: list[Path], model: str) -> Path:
    root = tmp / "photos"
    root.mkdir()
    for i, f in enumerate(files):
        (root / f"{i:05d}.jpg").symlink_to(f)
    Library.create(tmp / "data", [root], k="8", model=model).close()
    return tmp / "data"


def local_or_service(files: list[Path], model: str, embedder: Any) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        data = fresh_library(Path(tmp), files, model)
        with Library.open(data, write=True) as lib:
            ingestor = TimedIngestor(lib, batch_size=32, embedder=embedder)
            report = ingestor.run()
    wait = report.seconds - ingestor.model_s - ingestor.commit_s
    stages = f"model {ingestor.model_s:.1f}, commit {ingestor.commit_s:.1f}, decode wait {wait:.1f}"
    return report.embedded / report.seconds, stages


def with_ray(files: list[Path], model: str, node_cpus: int) -> tuple[float, str]:
    from ray.cluster_utils import Cluster

    from imgindex.raypass import RayIngestor, connected

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": node_cpus, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=node_cpus)
    cluster.wait_for_nodes()
    try:
        with tempfile.TemporaryDirectory() as tmp, connected(cluster.address) as ray:
            data = fresh_library(Path(tmp), files, model)
            with Library.open(data, write=True) as lib:
                report = RayIngestor(lib, ray, batch_size=32).run()
    finally:
        cluster.shutdown()
    s = report.ray["seconds"]
    stages = (
        f"prepare {s['prepare']:.1f} (CPU-s on the nodes), model {s['model']:.1f} (CPU-s in "
        f"the actors), writer: wait {s['wait']:.1f}, commit {s['commit']:.1f}; "
        f"{report.ray['nodes_used']} of {report.ray['nodes']} nodes did work"
    )
    return report.embedded / report.seconds, stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--node-cpus", type=int, default=1)
    args = ap.parse_args()
    files = photos(args.images)
    spec = get_spec(args.model)
    local = load_embedder(spec.name, device="cpu")
    proc, url = start_server(spec.name, "cpu")
    try:
        rows = [
            ("local model", *local_or_service(files, spec.name, local)),
            (
                "embedding service on loopback",
                *local_or_service(
                    files,
                    spec.name,
                    ChosenEmbedder(spec, lambda: local, RemoteEmbedder(url, spec), "wait"),
                ),
            ),
        ]
    finally:
        proc.terminate()
        proc.wait()
    rows.append(
        (
            f"Ray, two local nodes of {args.node_cpus} CPU",
            *with_ray(files, spec.name, args.node_cpus),
        )
    )
    print(
        f"\n{len(files)} caltech-dev photos, {spec.name}, fresh library each, one run",
        file=sys.stderr,
    )
    print("| ingest | images/s end to end | where the time goes (s) |")
    print("|---|---|---|")
    for name, rate, stages in rows:
        print(f"| {name} | {rate:.1f} | {stages} |")


if __name__ == "__main__":
    main()
