"""Choosing k for ``k = auto``: candidate criteria side by side on real vectors.

    python bench/autok.py [--tables criteria ingest] [--cost 10000 100000] [--cache FILE]

(``--tables`` with no name: no caltech table; ``--cost`` with no size: no cost table.)

caltech-dev is embedded once with the default model (``efficientnet_lite0``) and the vectors
are cached under /tmp (made here when the cache is missing). Sets: all 20 categories and
subsets of 5, 10 and 15, each in several arrival orders.

1. *Criteria* (on each set's final vectors): the k each criterion picks from the candidate
   list (``cluster.auto_candidates``) and the NMI against the categories of a consolidation
   (``cluster.fit_full``) with that k, beside the best fixed k.
2. *As ingested*: the set arrives folder by folder through the real code
   (``organize.after_batch`` per batch of 32, ``organize.after_drain`` after each folder) with
   ``k = auto``; k after each drain and the final NMI against the best fixed k.
3. *Cost* of re-choosing k (``organize.rechoose_k``) on synthetic libraries of ``--cost``
   vectors, and of one batch's update, which must not grow with the library.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # query.py, clusters.py

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "caltech-dev"
CACHE = Path("/tmp/imgindex-autok/caltech-dev.npz")


def corpus_vectors(cache: Path = CACHE, root: Path = CORPUS) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, category names)`` of caltech-dev in folder order, from ``cache`` or embedded
    now with the default model (and cached)."""
    if cache.exists():
        got = np.load(cache)
        return got["vectors"], got["labels"]
    from imgindex.decode import decode_for_model
    from imgindex.models import load_embedder

    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
    embedder = load_embedder()
    start, vecs = time.perf_counter(), []
    for i in range(0, len(files), 32):
        pixels = np.stack([decode_for_model(f.read_bytes()).pixels for f in files[i : i + 32]])
        vecs.append(embedder.embed(pixels))
    print(f"embedded {len(files)} photos in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    labels = np.array([f.parent.name for f in files])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=np.concatenate(vecs).astype(np.float32), labels=labels)
    return corpus_vectors(cache, root)


def subsets(labels: np.ndarray) -> list[tuple[str, list[str]]]:
    """``(name, categories in arrival order)``: all 20 and two draws of 5, 10 and 15."""
    cats = sorted(set(labels.tolist()))
    out = [("all 20", cats)]
    for size in (5, 10, 15):
        for seed in (1, 2):
            rng = np.random.default_rng(seed)
            out.append((f"{size} #{seed}", sorted(rng.choice(cats, size, replace=False).tolist())))
    return out


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def _bic(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """BIC of a spherical Gaussian mixture with one shared variance (X-means), larger better."""
    n, d = x.shape
    sizes = np.bincount(labels, minlength=k).astype(float)
    centres = np.stack([x[labels == j].mean(0) if sizes[j] else x[0] for j in range(k)])
    sse = float(((x - centres[labels]) ** 2).sum())
    var = sse / max(d * (n - k), 1)
    used = sizes[sizes > 0]
    loglik = float(np.sum(used * np.log(used / n))) - n * d / 2 * np.log(2 * np.pi * var)
    loglik -= d * (n - k) / 2
    return loglik - (k * (d + 1)) / 2 * np.log(n)


def _gap(x: np.ndarray, ks: list[int], refs: int = 3) -> int:
    """Tibshirani's gap statistic (uniform references in the PCA box): the smallest k whose
    gap is within one standard error of the next candidate's."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    lo, hi = x.min(0), x.max(0)
    gaps, errs = [], []
    for k in ks:
        w = np.log(KMeans(k, n_init=1, random_state=0).fit(x).inertia_)
        ref = [
            np.log(KMeans(k, n_init=1, random_state=0).fit(rng.uniform(lo, hi, x.shape)).inertia_)
            for _ in range(refs)
        ]
        gaps.append(np.mean(ref) - w)
        errs.append(np.std(ref) * np.sqrt(1 + 1 / refs))
    for i in range(len(ks) - 1):
        if gaps[i] >= gaps[i + 1] - errs[i + 1]:
            return ks[i]
    return ks[-1]


CRITERIA = (
    "silhouette euclid 1 init (before)",
    "silhouette cosine 3 inits",
    "centroid silhouette cosine 3 inits",
    "the same, largest k within 5 % (chosen)",
    "Davies-Bouldin",
    "Calinski-Harabasz",
    "BIC spherical (PCA 32)",
    "gap (PCA 32, 3 refs)",
    "HDBSCAN clusters (min 5)",
)


def criteria(x: np.ndarray, truth: np.ndarray) -> tuple[dict[str, int], dict[int, float]]:
    """The k each criterion picks on ``x`` and the NMI of a consolidation at every candidate."""
    import warnings

    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.metrics import (
        calinski_harabasz_score,
        davies_bouldin_score,
        silhouette_score,
    )
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from imgindex import cluster

    ks = cluster.auto_candidates(len(x))
    ks = [k for k in ks if k <= 80]
    low = _pca(x, 32)
    nmis, scores = {}, {c: {} for c in CRITERIA}
    for k in ks:
        centres = cluster.fit_full(x, k, seed=0, n_init=cluster.AUTO_INITS)
        labels = cluster.assign(centres, x)
        nmis[k] = nmi(truth, labels)
        one = KMeans(k, n_init=1, random_state=0).fit_predict(x)
        s = scores
        s[CRITERIA[0]][k] = silhouette_score(x, one)
        s[CRITERIA[1]][k] = silhouette_score(x, labels, metric="cosine")
        s[CRITERIA[2]][k] = cluster.centroid_silhouette(x, centres)
        s[CRITERIA[4]][k] = -davies_bouldin_score(x, labels)
        s[CRITERIA[5]][k] = calinski_harabasz_score(x, labels)
        s[CRITERIA[6]][k] = _bic(low, KMeans(k, n_init=3, random_state=0).fit_predict(low), k)
    picked = {c: max(s[c], key=lambda k, c=c: s[c][k]) for c in CRITERIA[:7] if s[c]}
    picked[CRITERIA[3]] = cluster.choose_k(x, candidates=ks)[0]
    picked[CRITERIA[7]] = _gap(low, ks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = HDBSCAN(min_cluster_size=5).fit(x).labels_.max() + 1
    picked[CRITERIA[8]] = int(max(2, found))
    for k in set(picked.values()) - set(nmis):
        nmis[k] = nmi(truth, cluster.assign(cluster.fit_full(x, k, n_init=3), x))
    return picked, nmis


def best_fixed(x: np.ndarray, labels: np.ndarray, cats: list[str]) -> tuple[int, float]:
    """The fixed k (of the candidates up to 80) whose consolidation has the best NMI."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from imgindex import cluster

    keep = np.isin(labels, cats)
    sub, truth = x[keep], labels[keep]
    nmis = {
        k: nmi(truth, cluster.assign(cluster.fit_full(sub, k, n_init=cluster.AUTO_INITS), sub))
        for k in cluster.auto_candidates(len(sub))
        if k <= 80
    }
    best = max(nmis, key=lambda k: nmis[k])
    return best, nmis[best]


def criteria_table(x: np.ndarray, labels: np.ndarray) -> dict[str, tuple[int, float]]:
    """Print the criteria table; returns each set's best fixed ``(k, NMI)``."""
    sets = subsets(labels)
    bests = {}
    print("## Criteria: k picked (NMI of a consolidation at that k) on each set's vectors\n")
    print("| criterion | " + " | ".join(name for name, _ in sets) + " | worst NMI - best fixed |")
    print("|---|" + "---|" * (len(sets) + 1))
    rows: dict[str, list[str]] = {c: [] for c in CRITERIA}
    worst = dict.fromkeys(CRITERIA, 0.0)
    best_row = []
    for _, cats in sets:
        keep = np.isin(labels, cats)
        picked, nmis = criteria(x[keep], labels[keep])
        best = max(nmis, key=lambda k: nmis[k])
        bests[_] = (best, nmis[best])
        best_row.append(f"{best} ({nmis[best]:.3f})")
        for c in CRITERIA:
            rows[c].append(f"{picked[c]} ({nmis[picked[c]]:.3f})")
            worst[c] = min(worst[c], nmis[picked[c]] - nmis[best])
    for c in CRITERIA:
        print(f"| {c} | " + " | ".join(rows[c]) + f" | {worst[c]:+.3f} |")
    print("| *best fixed k* | " + " | ".join(best_row) + " | |\n", flush=True)
    return bests


def ingest(x: np.ndarray, labels: np.ndarray, order: list[str], batch: int = 32) -> tuple:
    """The categories of ``order`` arrive folder by folder through the real code, ``k =
    auto``: ``organize.after_batch`` per batch, ``organize.after_drain`` after each folder.
    Returns k after each drain, the final NMI and the seconds the drains took."""
    import tempfile

    from sklearn.metrics import normalized_mutual_info_score as nmi

    from imgindex import organize
    from imgindex.db import images as stored
    from imgindex.db.schema import images
    from imgindex.library import Library

    tmp = Path(tempfile.mkdtemp(prefix="imgindex-autok-"))
    offline = tmp / "offline"  # a root that is not mounted: rows are kept, never rescanned
    Library.create(tmp / "data", [offline], model="efficientnet_lite0").close()
    ks, drains, n = [], 0.0, 0
    per_drain = -(-len(order) // 8)  # 8 drains or fewer, the last one after the last folder
    with Library.open(tmp / "data", write=True) as lib:
        dim = lib.dim
        for f, cat in enumerate(order):
            rows = x[labels == cat]
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                paths = [f"{offline}/{cat}/{start + i}.jpg" for i in range(len(part))]
                with lib.engine.begin() as conn:
                    conn.execute(
                        images.insert(),
                        [
                            {
                                "path": p,
                                "host": lib.host,
                                "root_id": 1,
                                "size": 1,
                                "mtime_ns": 1,
                                "status": "indexed",
                                "model": lib.model,
                                "vector": v.tobytes(),
                                "updated_at": 0.0,
                            }
                            for p, v in zip(paths, part, strict=True)
                        ],
                    )
                    ids = np.array(
                        conn.execute(
                            images.select()
                            .with_only_columns(images.c.id)
                            .where(images.c.path.in_(paths))
                            .order_by(images.c.id)
                        )
                        .scalars()
                        .all()
                    )
                    n += len(part)
                    organize.after_batch(conn, "auto", dim, ids, part, n)
            if (f + 1) % per_drain and f + 1 < len(order):
                continue
            start_drain = time.perf_counter()
            with lib.engine.begin() as conn:
                organize.after_drain(conn, "auto", dim)
            drains += time.perf_counter() - start_drain
            with lib.engine.connect() as conn:
                ks.append(len(set(stored.cluster_assignments(conn).values())))
        with lib.engine.connect() as conn:
            got = stored.cluster_assignments(conn)
            rows = images.select().with_only_columns(images.c.id, images.c.path)
            paths = dict(conn.execute(rows).all())
    truth = [Path(paths[i]).parent.name for i in got]
    return ks, nmi(truth, list(got.values())), drains


def ingest_table(x: np.ndarray, labels: np.ndarray, bests: dict[str, tuple[int, float]]) -> None:
    print("## As ingested folder by folder, k = auto\n")
    print("| set | order | k after each drain | final NMI | best fixed k (NMI) | difference |")
    print("|---|---|---|---|---|---|")
    for name, cats in subsets(labels):
        for seed in (None, 1):
            order = list(cats)
            if seed is not None:
                np.random.default_rng(seed).shuffle(order)
            ks, score, _ = ingest(x, labels, order)
            best_k, best = bests[name]
            trail = " ".join(map(str, ks))
            label = "folder names" if seed is None else f"shuffled #{seed}"
            print(
                f"| {name} | {label} | {trail} | {score:.3f} | {best_k} ({best:.3f}) "
                f"| {score - best:+.3f} |",
                flush=True,
            )


def cost_table(sizes: list[int], dim: int = 1280) -> None:
    """Seconds to re-choose k (a drain's work, off the ingest path) and ms of one batch's
    update, on synthetic libraries of ``bench/query.py``."""
    import statistics  # noqa: F401 (kept beside clusters.py's helpers)
    import tempfile

    from clusters import one_batch, timed
    from query import build

    from imgindex import organize
    from imgindex.db import meta
    from imgindex.library import Library

    tmp = Path(tempfile.mkdtemp(prefix="imgindex-autok-cost-"))
    print("## Cost of k = auto on synthetic vectors\n")
    print(
        "| vectors | k chosen | candidates scored | re-choose k s | consolidation s "
        "| one batch of 32 ms |"
    )
    print("|---|---|---|---|---|---|")
    for n in sizes:
        data, _, _ = build(tmp / str(n), n, dim)
        with Library.open(data, write=True) as lib:
            lib.cache.load()
            with lib.engine.begin() as conn:
                meta.set_k_setting(conn, "auto")
            lib.k_setting = "auto"
            start = time.perf_counter()
            with lib.engine.begin() as conn:
                k = organize.rechoose_k(conn, dim, n)
            choose = time.perf_counter() - start
            with lib.engine.connect() as conn:
                scored = len(meta.auto_k(conn).silhouette)
            full = timed(lib, lambda c: organize.consolidate(c, "auto", dim), 1)
            with lib.engine.begin() as conn:
                organize.consolidate(conn, "auto", dim)
            batch = one_batch(lib, 32, dim, n)
        print(
            f"| {n:,} | {k} | {scored} | {choose:.1f} | {full:.1f} | {batch * 1000:.1f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--cost", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument(
        "--tables", nargs="*", default=["criteria", "ingest"], help="criteria, ingest (or none)"
    )
    args = ap.parse_args()
    if args.tables:
        from threadpoolctl import threadpool_limits

        x, labels = corpus_vectors(args.cache)
        with threadpool_limits(1):  # small k-means: threads only contend on a shared machine
            if "criteria" in args.tables:
                bests = criteria_table(x, labels)
            else:
                bests = {name: best_fixed(x, labels, cats) for name, cats in subsets(labels)}
            if "ingest" in args.tables:
                ingest_table(x, labels, bests)
    if args.cost:
        cost_table(args.cost)


if __name__ == "__main__":
    main()
