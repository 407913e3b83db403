"""The same library on SQLite and on PostgreSQL, in one run: ingest, queries at scale, two writers.

    python bench/backends.py [--sizes 10000,100000] [--files 300] [--writer-files 600]
                             [--repeats 3] [--cold-runs 5] [--quick] [--corpus DIR]
                             [--only ingest,queries,writers]

Starts a PostgreSQL cluster of its own (Debian's server, run as the ``postgres`` user, a Unix
socket in a temp dir, the server's default settings: fsync and synchronous_commit on) and prints
markdown tables; the backends are measured alternately so that both see the same machine.

- ingest: ``imgindex index`` as a process (wall time, median of ``--repeats``) on the same
  ``--files`` photos (caltech-dev from ../shared/corpus, else drawn here), a fresh library each
  time, with the fast ``thumbnail`` model and with the default ``efficientnet_lite0``;
- queries on synthetic libraries of ``--sizes`` images (clustered unit vectors as in
  ``bench/query.py``, written through the library's own schema, then clustered with k = 50 and
  the FAISS file built by the writer, both with one thread): cold ``imgindex similar PHOTO``
  on an indexed photo and cold ``imgindex clusters --list`` (fresh processes, median of
  ``--cold-runs``), warm ``Library.search`` on stored vectors and ``list_clusters`` in one
  open library (medians);
- two writers on one PostgreSQL library: two data dirs (``IMGINDEX_HOST=a`` and ``b``), each
  indexing its own root of ``--writer-files`` distinct photos with ``thumbnail``, one after the
  other against both at once; with the CPU seconds of the clients, of the server and of the
  whole machine (the rest is other people's load).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))
from query import CHUNK, synthetic

from imgindex import organize
from imgindex.clusterstore import list_clusters
from imgindex.db.images import indexed_ids, vector_to_blob, vectors_for
from imgindex.db.roots import list_roots
from imgindex.db.schema import images
from imgindex.library import Library

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "caltech-dev"
PG_USER = "postgres"  # the cluster's OS user and its superuser role
BACKENDS = ("sqlite", "postgresql")
TICK = os.sysconf("SC_CLK_TCK")

# --- the PostgreSQL server ------------------------------------------------------------------


@dataclass
class Server:
    """A running cluster: its socket directory, data directory and database names."""

    top: Path
    names: itertools.count

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@/{database}?host={self.top}"

    def create_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"b{next(self.names)}"
        with psycopg.connect(host=str(self.top), user=PG_USER, dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def cpu_seconds(self) -> float:
        """CPU seconds of the postmaster and of every backend that has exited (a backend's
        time joins its parent's when it ends), plus those still running."""
        pid = int((self.top / "data" / "postmaster.pid").read_text().split()[0])
        total = _proc_cpu(pid, children=True)
        for child in Path("/proc").glob("[0-9]*"):
            try:
                if _proc_stat(int(child.name))[1] == pid:
                    total += _proc_cpu(int(child.name), children=False)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
        return total


def _proc_stat(pid: int) -> list[int]:
    """Fields of /proc/PID/stat from the state on: [state, ppid, ...] (state as 0)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    rest = raw[raw.rindex(")") + 2 :].split()
    return [0] + [int(x) for x in rest[1:]]


def _proc_cpu(pid: int, *, children: bool) -> float:
    f = _proc_stat(pid)  # utime, stime, cutime, cstime are fields 14-17 (here 11-14)
    return (f[11] + f[12] + ((f[13] + f[14]) if children else 0)) / TICK


def _bindir() -> Path | None:
    """Debian's newest PostgreSQL server (``initdb`` and ``pg_ctl``), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda b: [int(n) for n in b.parent.name.split(".") if n.isdigit()],
    )[::-1]
    return next((b for b in found if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)


def _as_postgres(*args: str | Path) -> None:
    subprocess.run(
        ["runuser", "-u", PG_USER, "--", *map(str, args)], check=True, capture_output=True
    )


@contextmanager
def postgres() -> Iterator[Server]:
    """A cluster for this run, stopped and removed at its end; exits when none can start."""
    bindir = _bindir()
    if bindir is None or os.geteuid() != 0:
        sys.exit("skipped: needs Debian's postgresql server and root (to run it as postgres)")
    top = Path(tempfile.mkdtemp(prefix="imgindex-bench-pg-"))
    entry = pwd.getpwnam(PG_USER)
    os.chown(top, entry.pw_uid, entry.pw_gid)
    data = top / "data"
    _as_postgres(bindir / "initdb", "-D", data, "-A", "trust", "-U", PG_USER)
    options = f"-c listen_addresses='' -c unix_socket_directories={top}"
    _as_postgres(bindir / "pg_ctl", "-D", data, "-o", options, "-l", top / "log", "-w", "start")
    try:
        yield Server(top, itertools.count())
    finally:
        _as_postgres(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(top, ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------------


def imgindex(data: Path, *args: str | Path, env: dict[str, str] | None = None) -> str:
    """Run ``python -m imgindex --data-dir DATA ARGS``; its stdout."""
    return subprocess.run(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    ).stdout


def timed_process(data: Path, *args: str | Path) -> float:
    start = time.perf_counter()
    imgindex(data, *args)
    return time.perf_counter() - start


def database_args(url: str | None) -> list[str]:
    return [] if url is None else ["--database", url]


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK  # less idle and iowait


def fmt_ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}" if a > 0 else "-"


def photos(corpus: Path, count: int, offset: int, folder: Path) -> int:
    """``count`` distinct photos copied into ``folder`` (caltech-dev from ``offset`` on, else
    pictures drawn here); how many there are."""
    folder.mkdir(parents=True)
    files = sorted(corpus.rglob("*.jpg"))[offset : offset + count] if corpus.is_dir() else []
    for i, f in enumerate(files):
        shutil.copyfile(f, folder / f"{i:05d}.jpg")
    rng = np.random.default_rng(offset)
    for i in range(len(files), count):  # no corpus: smooth random pictures, all different
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / f"{i:05d}.jpg")
    return count


# --- ingest -----------------------------------------------------------------------------------


def ingest(server: Server, folder: Path, tmp: Path, model: str, repeats: int) -> dict:
    """Median wall seconds of ``imgindex index`` on ``folder``, and of the pass it reports
    (without the process's start: imports, the model loaded), per backend; a fresh library
    each time (made untimed by ``init``)."""
    times: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
    for r in range(repeats):
        for backend in BACKENDS:
            url = server.create_database() if backend == "postgresql" else None
            data = tmp / f"ingest-{model}-{backend}-{r}"
            imgindex(data, *database_args(url), "init", folder, "--model", model)
            start = time.perf_counter()
            report = json.loads(imgindex(data, "index", "--json"))
            times[backend].append((time.perf_counter() - start, report["seconds"]))
    return {
        part: {b: statistics.median(t[i] for t in times[b]) for b in BACKENDS}
        for i, part in enumerate(("wall", "pass"))
    }


# --- queries at scale -------------------------------------------------------------------------


def build(root: Path, n: int, dim: int, url: str | None) -> tuple[Path, Path, dict[str, float]]:
    """A library of ``n`` synthetic vectors plus one real indexed photo, clustered (k = 50) and
    its FAISS file built; the seconds each step took. Reused when ``root`` has one."""
    data, photo = root / "data", root / "photos" / "query.jpg"
    if data.exists():
        return data, photo, {}
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (120, 30, 200)).save(photo)
    offline = root / "offline"  # a root that is not mounted: its rows are kept, never rescanned
    Library.create(
        data, [photo.parent, offline], model="efficientnet_lite0", k="50", database=url
    ).close()
    took = {}
    with Library.open(data, write=True) as lib:
        start = time.perf_counter()
        with lib.engine.begin() as conn:
            insert_rows(conn, n, dim, photo, offline, lib.model)
        took["insert"] = time.perf_counter() - start
        # one thread: on a loaded machine, k-means' and FAISS's thread pools spin (10x slower)
        with threadpool_limits(1):
            start = time.perf_counter()
            with lib.engine.begin() as conn:
                organize.consolidate(conn, "50", dim)
            took["cluster"] = time.perf_counter() - start
            start = time.perf_counter()
            lib.cache.load()  # builds and saves the FAISS file
            took["index"] = time.perf_counter() - start
    return data, photo, took


def insert_rows(conn, n: int, dim: int, photo: Path, offline: Path, model: str) -> None:
    """``n`` indexed rows under the offline root, then the photo's row (the first vector)."""
    ids = {path: rid for rid, path in list_roots(conn)}
    first = None
    for start, x in zip(range(0, n, CHUNK), synthetic(n, dim, n), strict=True):
        first = x[0] if first is None else first
        conn.execute(
            images.insert(),
            [row(f"{offline}/{start + i}.jpg", ids[offline], model, v) for i, v in enumerate(x)],
        )
    st = photo.stat()
    values = row(str(photo), ids[photo.parent], model, first)
    values.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    conn.execute(images.insert().values(**values))


def row(path: str, root_id: int, model: str, vector: np.ndarray) -> dict:
    return {
        "path": path,
        "root_id": root_id,
        "size": 1,
        "mtime_ns": 1,
        "status": "indexed",
        "model": model,
        "vector": vector_to_blob(vector),
        "updated_at": time.time(),
    }


def cold(libs: dict[str, tuple[Path, Path]], runs: int) -> dict[str, dict[str, float]]:
    """Median wall seconds of fresh ``similar`` and ``clusters --list`` processes, alternating
    backends."""
    out: dict[str, dict[str, list[float]]] = {b: {"similar": [], "clusters": []} for b in libs}
    for _ in range(runs):
        for backend, (data, photo) in libs.items():
            out[backend]["similar"].append(timed_process(data, "similar", photo, "--json"))
            out[backend]["clusters"].append(timed_process(data, "clusters", "--list", "--json"))
    return {b: {k: statistics.median(v) for k, v in d.items()} for b, d in out.items()}


def warm(libs: dict[str, tuple[Path, Path]], dim: int, queries: int) -> dict[str, dict]:
    """Median ms of ``Library.search`` (``queries`` stored vectors, the same on both) and of
    ``list_clusters``, in libraries open in this process, alternating backends."""
    opened = {b: Library.open(data) for b, (data, _) in libs.items()}
    try:
        with opened["sqlite"].engine.connect() as conn:
            pick = np.random.default_rng(1).choice(indexed_ids(conn), queries, replace=False)
            _, vectors = vectors_for(conn, np.sort(pick).tolist(), dim)
        times: dict[str, dict[str, list[float]]] = {b: {"search": [], "list": []} for b in libs}
        for lib in opened.values():  # first use: the FAISS file mapped, a connection made
            lib.search(vectors[0], 10)
            list_clusters(lib.engine, lib.dim)
        for i, v in enumerate(vectors):
            for b, lib in opened.items():
                start = time.perf_counter()
                lib.search(v, 10)
                times[b]["search"].append((time.perf_counter() - start) * 1000)
                if i % 10 == 0:
                    start = time.perf_counter()
                    list_clusters(lib.engine, lib.dim)
                    times[b]["list"].append((time.perf_counter() - start) * 1000)
    finally:
        for lib in opened.values():
            lib.close()
    return {b: {k: statistics.median(v) for k, v in d.items()} for b, d in times.items()}


# --- two writers ------------------------------------------------------------------------------


def two_writers(server: Server, tmp: Path, roots: list[Path], repeats: int) -> list[dict]:
    """One host after the other and both at once, in alternating order, on a fresh library
    each time: wall seconds, images embedded, CPU seconds."""
    modes = ["one after the other", "both at once"]
    results = []
    for r in range(repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            results.append(writers_once(server, tmp / f"two-{len(results)}", roots, mode))
    return results


def writers_once(server: Server, tmp: Path, roots: list[Path], mode: str) -> dict:
    """Hosts ``a`` and ``b`` (a data dir each) index their own root of one PostgreSQL library
    with ``thumbnail``, in ``mode``."""
    url = server.create_database()
    hosts = {"a": tmp / "a", "b": tmp / "b"}
    for (host, data), root in zip(hosts.items(), roots, strict=True):  # each its own root
        env = {"IMGINDEX_HOST": host}
        imgindex(
            data, "--database", url, "init", root, "--model", "thumbnail", "--k", "20", env=env
        )
    busy, pg, start = machine_busy(), server.cpu_seconds(), time.perf_counter()
    procs: list[subprocess.Popen] = []
    clients, reports = 0.0, []
    for (host, data), root in zip(hosts.items(), roots, strict=True):
        procs.append(start_index(data, root, host))
        if mode == "one after the other":
            clients += wait(procs[-1], reports)
    if mode == "both at once":
        clients += sum(wait(p, reports) for p in procs)
    wall, machine = time.perf_counter() - start, machine_busy() - busy
    time.sleep(0.3)  # the backends exit and their time joins the postmaster's
    return {
        "mode": mode,
        "wall": wall,
        "embedded": sum(rep["embedded"] for rep in reports),
        "failed": sum(rep["failed"] + rep["pending"] for rep in reports),
        "retried": sum(rep["retried"] for rep in reports),
        "clients": clients,
        "pg": server.cpu_seconds() - pg,
        "machine": machine,
    }


def start_index(data: Path, root: Path, host: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "index", str(root), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "IMGINDEX_HOST": host},
    )


def wait(proc: subprocess.Popen, reports: list[dict]) -> float:
    """Wait for ``proc``; its CPU seconds (its threads and children); its report appended."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"imgindex index failed ({proc.returncode}):\n{err}")
    report = json.loads(out)
    report["retried"] = err.count("writing them one by one")  # a batch's transaction failed
    if report["retried"]:
        why = next(x for x in err.splitlines() if "writing them one by one" in x or "(psycopg" in x)
        print(why[:300], file=sys.stderr)
    reports.append(report)
    return usage.ru_utime + usage.ru_stime


# --- the report -------------------------------------------------------------------------------


def line(measure: str, values: dict[str, float], digits: int, target: str = "") -> str:
    a, b = values["sqlite"], values["postgresql"]
    return f"| {measure} | {a:.{digits}f} | {b:.{digits}f} | {fmt_ratio(a, b)} | {target} |"


def report_ingest(server: Server, folder: Path, n: int, tmp: Path, repeats: int) -> None:
    for model, target in (("thumbnail", ""), ("efficientnet_lite0", "≤ 1.30")):
        t = ingest(server, folder, tmp, model, repeats)
        rate = {b: n / s for b, s in t["pass"].items()}
        print(line(f"ingest {n} photos, `{model}`: `index` wall s", t["wall"], 2, target))
        print(line(f"ingest {n} photos, `{model}`: the pass s", t["pass"], 2, target))
        print(line(f"ingest {n} photos, `{model}`: the pass, images/s", rate, 1), flush=True)


def report_queries(server: Server, n: int, dim: int, tmp: Path, runs: int) -> None:
    libs, built = {}, {}
    for backend in BACKENDS:
        url = server.create_database() if backend == "postgresql" else None
        data, photo, took = build(tmp / f"q{n}-{backend}", n, dim, url)
        libs[backend], built[backend] = (data, photo), took
    for step in ("insert", "cluster", "index"):
        label = {"insert": "rows written", "cluster": "clustered (k 50)", "index": "FAISS built"}
        print(line(f"{n:,}: build, {label[step]} s", {b: built[b][step] for b in BACKENDS}, 1))
    c = cold(libs, runs)
    target = "≤ 1.20" if n >= 100_000 else ""
    print(line(f"{n:,}: cold `similar` s", {b: c[b]["similar"] for b in BACKENDS}, 3, target))
    print(line(f"{n:,}: cold `clusters --list` s", {b: c[b]["clusters"] for b in BACKENDS}, 3))
    w = warm(libs, dim, 100)
    print(line(f"{n:,}: warm search ms (median)", {b: w[b]["search"] for b in BACKENDS}, 2))
    print(line(f"{n:,}: warm `list_clusters` ms", {b: w[b]["list"] for b in BACKENDS}, 1))
    sys.stdout.flush()


def report_writers(server: Server, tmp: Path, count: int, corpus: Path, repeats: int) -> None:
    roots = [tmp / "writers" / "a", tmp / "writers" / "b"]
    for i, root in enumerate(roots):
        photos(corpus, count, i * count, root)
    runs = two_writers(server, tmp / "writers", roots, repeats)
    print(
        f"\nTwo writers on one PostgreSQL library, `thumbnail`, {count} photos per host "
        f"(median of {repeats}):\n"
    )
    print(
        "| hosts | `index` wall s | embedded | failed or pending | batches retried one by one "
        "| images/s | clients CPU s | server CPU s | machine busy, cores | others' load, cores |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rate = {}
    for mode in ("one after the other", "both at once"):
        mine = [r for r in runs if r["mode"] == mode]
        med = {k: statistics.median(r[k] for r in mine) for k in mine[0] if k != "mode"}
        rate[mode] = med["embedded"] / med["wall"]
        others = (med["machine"] - med["clients"] - med["pg"]) / med["wall"]
        print(
            f"| {mode} | {med['wall']:.2f} | {med['embedded']:.0f} | {med['failed']:.0f} "
            f"| {med['retried']:.0f} | {rate[mode]:.1f} | {med['clients']:.2f} "
            f"| {med['pg']:.2f} | {med['machine'] / med['wall']:.2f} | {others:.2f} |"
        )
    ratio = rate["both at once"] / rate["one after the other"]
    print(f"\nboth at once / one after the other: {ratio:.2f}× the rate (target ≥ 1.7)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000", help="library sizes, comma-separated")
    ap.add_argument("--files", type=int, default=300, help="photos for the ingest rows")
    ap.add_argument("--writer-files", type=int, default=600, help="photos per writing host")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="caltech-dev (else drawn)")
    ap.add_argument("--only", default="ingest,queries,writers", help="parts to run")
    ap.add_argument("--quick", action="store_true", help="10k only, 60 photos, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.files, args.writer_files, args.repeats = "10000", 60, 150, 1
    parts = args.only.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="imgindex-backends-"))
    source = args.corpus if args.corpus.is_dir() else "pictures drawn here (no corpus)"
    print(f"photos: {source}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}\n")
    with postgres() as server:
        print("| measure | SQLite | PostgreSQL | PostgreSQL / SQLite | target |")
        print("|---|---|---|---|---|")
        if "ingest" in parts:
            folder = tmp / "ingest"
            n = photos(args.corpus, args.files, 0, folder)
            report_ingest(server, folder, n, tmp, args.repeats)
        if "queries" in parts:
            for n in (int(x) for x in args.sizes.split(",")):
                report_queries(server, n, args.dim, tmp, args.cold_runs)
        if "writers" in parts:
            report_writers(server, tmp, args.writer_files, args.corpus, args.repeats)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
