"""``imgindex index --ray``: one pass whose reading, decoding and embedding run on a Ray cluster.

Ray Data reads, checks, hashes and decodes the files in CPU tasks on every node (the same
``ingest.prepare_file`` as a local pass), embeds the decoded ones in a pool of actors (one GPU
each where the cluster has GPUs, one CPU each otherwise), and streams the results back to this
process, the one writer, which commits them batch by batch through ``Ingestor.store``: the same
rows, changes log and cluster updates as a local pass. What is committed stays committed: a run
killed anywhere (its driver, a worker node) leaves files the next run finds unchanged, so it
embeds only the rest.

Files must be at the same path on every node (a shared mount). Before any work, each node is
asked to read each root; a node that cannot fails the run with the node and the root named. A
file a node does not find while this host does is left pending (retried by the next pass), never
taken for deleted.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from imgindex import names
from imgindex.db import images
from imgindex.db.roots import list_roots
from imgindex.errors import RayStalled, RayUnavailable, RootNotShared
from imgindex.ingest import Ingestor, Prepared, Report, embed_prepared, prepare_file
from imgindex.scan import FileStat, Unseen, vanished, walk

log = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed here; install it with: pip install 'imgindex[ray]'"
PROBE_TIMEOUT_S = 120.0  # a node that cannot answer in this time cannot take part either
STALL_S = 900.0  # no batch back from the cluster in this long: the run stops, and says why


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or RayUnavailable saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data: the ``data`` extra of ray
    except ImportError as exc:
        raise RayUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return ray


@contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray, connected to ``address`` (HOST:PORT; "auto": the cluster this host belongs to;
    "local": a new Ray started on this host for the run, whatever else runs), disconnected at
    the end."""
    ray = import_ray()
    where = "a local Ray started for this run" if address == "local" else address
    with redirect_stdout(sys.stderr):  # Ray prints the cluster's events: stdout is for data
        yield from _connected(ray, address, where)


def _connected(ray: ModuleType, address: str, where: str) -> Iterator[ModuleType]:
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,  # a worker's failures reach the library as reasons
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {where}: {exc}") from exc
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan, its timings
        yield ray
    finally:
        ray.shutdown()


class RayIngestor(Ingestor):
    """An Ingestor whose files are prepared and embedded by a Ray cluster (``ray``: the module,
    connected); everything else, committing first, runs here as in a local pass."""

    def __init__(self, lib: Any, ray: ModuleType, **kwargs: Any) -> None:
        super().__init__(lib, **kwargs)
        self.ray = ray
        self._stages = {"prepare": 0.0, "model": 0.0, "wait": 0.0, "commit": 0.0}
        self._nodes_used: set[str] = set()
        self.stall_s = STALL_S

    def _nodes_alive(self) -> str:
        alive = sum(bool(n.get("Alive")) for n in self.ray.nodes())
        return f"{alive} of the {self.report.ray.get('nodes', '?')} nodes it began with are alive"

    def run(
        self, folders: list[Path] | None = None, on_start: Callable[[int], None] | None = None
    ) -> Report:
        nodes = check_roots(self.ray, self._roots())
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        self.report.ray = {
            "nodes": nodes,
            "actors": gpus or nodes,
            "device": "cuda" if gpus else "cpu",
        }
        report = super().run(folders, on_start)
        report.ray["nodes_used"] = len(self._nodes_used)
        report.ray["seconds"] = {k: round(v, 3) for k, v in self._stages.items()}
        return report

    def _roots(self) -> list[str]:
        with self.lib.engine.connect() as conn:
            return [str(root) for _, root in list_roots(conn)]

    def ingest(self, files: Iterable[tuple[int, FileStat]]) -> None:
        """Prepare and embed ``(root_id, file)`` pairs on the cluster; commit them here."""
        items = [pickle.dumps(item) for item in files]
        if not items:
            return
        batches = self._dataset(items).iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2
        )
        waited = time.perf_counter()
        for batch in watched(batches, self.stall_s, self._nodes_alive):
            self._stages["wait"] += time.perf_counter() - waited
            self._stages["prepare"] += float(np.sum(batch["prepare_s"]))
            self._stages["model"] += float(np.sum(batch["model_s"]))
            self._nodes_used.update(str(n) for n in (*batch["node"], *batch["actor_node"]))
            started = time.perf_counter()
            self.store([self._received(pickle.loads(r)) for r in batch["record"]])
            self._stages["commit"] += time.perf_counter() - started
            if self.should_stop():  # the rest is found again by the next pass
                return
            waited = time.perf_counter()

    def _dataset(self, items: list[bytes]) -> Any:
        """files -> prepare (CPU tasks on every node) -> embed (actor pool)."""
        with self.lib.engine.connect() as conn:
            known = self.ray.put(images.indexed_hashes(conn, self.lib.model))
        gpus = self.report.ray.get("device") == "cuda"
        actors = max(1, int(self.report.ray.get("actors", 1)))
        blocks = max(1, min(len(items) // self.batch_size + 1, 1000))
        ds = self.ray.data.from_items([{"item": i} for i in items], override_num_blocks=blocks)
        ds = ds.map_batches(
            prepare_batch,
            batch_size=self.batch_size,
            batch_format="numpy",
            fn_kwargs={"known": known, "size": self.input_size, "max_pixels": self.max_pixels},
            num_cpus=1,  # Ray Data spreads tasks over the nodes
        )
        return ds.map_batches(
            EmbedBatch,
            batch_size=self.batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": self.lib.model,
                "weights": self.weights,
                "device": "cuda" if gpus else "cpu",
            },
            compute=self.ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_gpus=1 if gpus else 0,
            # Half a CPU: the tasks that prepare their input can always run beside them, even
            # once the actors of a lost node restart elsewhere (with a whole CPU each, they can
            # take every CPU of a two-node cluster's survivor and wait forever for input).
            # Different resources also keep Ray Data from fusing the two stages into the actors.
            num_cpus=0 if gpus else 0.5,
        )

    @staticmethod
    def _received(p: Prepared) -> Prepared:
        """A worker's result, checked here: a file it did not find while this host sees it is
        not deleted (its node lacks the share) but left pending for the next pass."""
        if p.kind == "vanished" and not vanished(p.fs.path):
            log.warning(
                "a Ray node could not find %s: left for the next pass", names.shown(p.fs.path)
            )
            return Prepared(
                p.root_id,
                p.fs,
                "unreachable",
                reason="a Ray node could not find it (is the share mounted at the same path on "
                "every node?); will retry",
            )
        return p


def watched(batches: Iterator[Any], stall_s: float, why: Callable[[], str]) -> Iterator[Any]:
    """``batches``, read by a thread of their own; RayStalled when none comes for ``stall_s``
    seconds (a cluster that lost the resources to go on), saying ``why()``."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for batch in batches:
                ready.put(("batch", batch))
            ready.put(("end", None))
        except BaseException as exc:  # re-raised in the caller's thread
            ready.put(("error", exc))

    threading.Thread(target=pump, name="ray-batches", daemon=True).start()
    while True:
        try:
            kind, value = ready.get(timeout=stall_s)
        except queue.Empty:
            raise RayStalled(
                f"no batch came back from the Ray cluster in {stall_s:.0f} s ({why()}); "
                "what was committed is kept, and the next run embeds only the rest"
            ) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


# --- on the workers ------------------------------------------------------------------------------


_known_sets: dict[str, frozenset[bytes]] = {}  # per worker process: the object fetched once


def prepare_batch(
    batch: dict[str, np.ndarray], known: Any, size: int, max_pixels: int
) -> dict[str, np.ndarray]:
    """Ray task: ``ingest.prepare_file`` on each file; pixels in a column of their own (zeros
    for a file that was not decoded), the rest pickled."""
    import ray

    hashes = _known_sets.get(known.hex())
    if hashes is None:
        hashes = _known_sets.setdefault(known.hex(), ray.get(known))

    def lookup(digest: str) -> int | None:
        return 0 if bytes.fromhex(digest) in hashes else None  # 0: looked up when written

    records, pixels, seconds = [], np.zeros((len(batch["item"]), size, size, 3), np.uint8), []
    for i, item in enumerate(batch["item"]):
        started = time.perf_counter()
        root_id, fs = pickle.loads(item)
        try:
            p = prepare_file(root_id, fs, lookup, size=size, max_pixels=max_pixels)
        except Exception as exc:  # this file's failure, as in a local pass
            p = Prepared(root_id, fs, "failed", reason=f"unexpected error: {exc!r}")
        if p.pixels is not None:
            pixels[i] = p.pixels
            p.pixels = None
        records.append(pickle.dumps(p))
        seconds.append(time.perf_counter() - started)
    node = ray.get_runtime_context().get_node_id()
    return {
        "record": np.array(records, dtype=object),
        "pixels": pixels,
        "prepare_s": np.array(seconds),
        "node": np.array([node] * len(records), dtype=object),
    }


class EmbedBatch:
    """Ray actor: the library's model, loaded once, embedding the decoded files of a batch."""

    def __init__(self, model: str, weights: Path | None, device: str) -> None:
        import ray

        from imgindex.models import load_embedder

        self.embedder = load_embedder(model, weights=weights, device=device, progress=False)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records: list[Prepared] = [pickle.loads(r) for r in batch["record"]]
        decoded = []
        for p, px in zip(records, batch["pixels"], strict=True):
            if p.kind == "decoded":
                p.pixels = px
                decoded.append(p)
        started = time.perf_counter()
        embed_prepared(self.embedder, decoded)
        spent = (time.perf_counter() - started) / max(1, len(records))
        for p in records:
            p.pixels = None
        return {
            "record": np.array([pickle.dumps(p) for p in records], dtype=object),
            "prepare_s": batch["prepare_s"],
            "model_s": np.full(len(records), spent),
            "node": batch["node"],
            "actor_node": np.array([self.node] * len(records), dtype=object),
        }


# --- the roots on every node ---------------------------------------------------------------------


def check_roots(ray: ModuleType, roots: list[str]) -> int:
    """Ask every alive node to read every root (and one file in it, where this host has one);
    RootNotShared names each node and root that failed. Returns how many nodes there are."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probes = [(root, first_file(root)) for root in roots]
    probe = ray.remote(num_cpus=0, max_retries=0)(unreadable_roots)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    asked = {
        f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})": probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(probes)
        for n in nodes
    }
    problems = []
    for node, ref in asked.items():
        try:
            failed = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except Exception as exc:
            problems.append(f"node {node} did not answer ({type(exc).__name__})")
            continue
        problems += [f"{names.shown(root)} on {node}: {why}" for root, why in failed]
    if problems:
        raise RootNotShared(
            "every Ray node must read the library's roots at the same path (a shared mount); "
            + "; ".join(problems)
        )
    return len(nodes)


def first_file(root: str) -> str | None:
    """A file under ``root`` as this host sees it (None: none, or the root is unreadable)."""
    try:
        return next((fs.path for fs in walk(Path(root), Unseen())), None)
    except OSError:
        return None


def unreadable_roots(probes: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Ray task on one node: ``(root, why)`` for each root it cannot list, or whose sample file
    it cannot read."""
    failed = []
    for root, sample in probes:
        try:
            os.listdir(root)
            if sample is not None:
                with open(sample, "rb") as fh:
                    fh.read(1)
        except OSError as exc:
            failed.append((root, f"{exc.strerror or exc} ({names.shown(exc.filename or root)})"))
    return failed
