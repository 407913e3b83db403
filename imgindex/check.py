"""``imgindex check``: whether a library is sound, and repairing what can be repaired.

Checked: SQLite's ``integrity_check``; every indexed row holds a finite, unit-length vector of
the library's model and dimension; nothing is stuck (queued paths outside every root, queued
paths no daemon processes, pending rows the daemon never retries or leaves overdue); the newest
FAISS file is this library's and unchanged since it was saved (hashed in full), holds exactly
the indexed ids (those changed since it was saved aside: the log overlays them) and agrees with
their stored vectors; no temporary or superseded index files are left.

``repair`` (the caller holds the write lock): the cache is rebuilt and saved, damaged vectors
are embedded again by the next pass (their rows become pending), stuck rows are released or
dropped, leftover files removed. What cannot be repaired (a damaged database) is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgindex import store
from imgindex.db import changes, images, meta, queue
from imgindex.db.dialect import integrity_problems
from imgindex.db.engine import snapshot
from imgindex.db.roots import root_paths
from imgindex.errors import ImgIndexError
from imgindex.fsafe import is_under
from imgindex.library import Library
from imgindex.vindex import FileRecord, ids_in, index_files, read_file, vectors_in

UNIT_TOLERANCE = 1e-3  # |norm - 1| of a stored vector
EXACT_TOLERANCE = 1e-5  # a flat file holds the stored floats themselves
DECODED_MIN_COSINE = 0.95  # IVF-SQ4 codes decode to >= 0.988 cosine of their vector (measured)
OVERDUE_S = 3600.0  # queued or pending work this late is stuck
CHUNK = 20_000
REEMBED_REASON = "its stored vector was damaged; waiting to be embedded again"


@dataclass
class Problem:
    """One finding. ``action``: what to do (or, once ``repaired``, what was done)."""

    area: str  # database | vectors | cache | queue | pending | files
    what: str
    count: int = 1
    repaired: bool = False
    action: str = ""
    fix: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "what": self.what,
            "count": self.count,
            "repaired": self.repaired,
            "action": self.action,
        }


@dataclass
class CheckReport:
    """What ``check`` found and did."""

    data_dir: str
    indexed: int = 0
    cache_file: str | None = None
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def add(
        self,
        area: str,
        what: str,
        count: int = 1,
        fix: Callable[[], str] | None = None,
        action: str = "",
    ) -> None:
        if fix is not None and not action:
            action = "repairable: run `imgindex check --repair`"
        self.problems.append(Problem(area, what, count, action=action, fix=fix))

    def as_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": not self.unrepaired,
            "indexed": self.indexed,
            "cache_file": self.cache_file,
            "problems": [p.as_dict() for p in self.problems],
            "repaired": sum(p.repaired for p in self.problems),
            "seconds": round(self.seconds, 3),
        }


def check(lib: Library, repair: bool = False) -> CheckReport:
    """Check ``lib``; with ``repair`` (``lib`` opened for writing) fix what can be fixed."""
    if repair and not lib.writable:
        raise ValueError("repairing needs the library opened for writing")
    start = time.monotonic()
    report = CheckReport(str(lib.paths.root))
    if _database(lib, report):
        rebuild = partial(_rebuild_cache, lib)  # one rebuild, whatever the cache's problems
        damaged = _vectors(lib, report)
        _stuck(lib, report)
        _cache(lib, report, damaged, rebuild)
        _leftovers(lib, report)
    if repair:
        _repair(lib, report)
    report.seconds = time.monotonic() - start
    return report


# --- the database and its vectors -------------------------------------------------------------


def _database(lib: Library, report: CheckReport) -> bool:
    """SQLite's own check; the others are skipped when it fails."""
    with lib.engine.connect() as conn:
        rows = integrity_problems(conn)
    if not rows:
        return True
    report.add(
        "database",
        f"SQLite integrity_check failed: {'; '.join(rows[:3])}",
        len(rows),
        action="not repairable here: restore a copy (imgindex.db.before-*.bak, a backup) or "
        "create the library again; other checks skipped",
    )
    return False


def _vectors(lib: Library, report: CheckReport) -> set[int]:
    """Indexed rows whose vector is missing, of another size or model, not finite or not of
    unit length; returns their ids."""
    found: dict[str, list[tuple[int, str]]] = {}
    n = 0
    with lib.engine.connect() as conn:
        for rows in images.iter_stored(conn, CHUNK):
            n += len(rows)
            for why, row in _damaged(lib, rows):
                found.setdefault(why, []).append((row.id, row.path))
    report.indexed = n
    for why, rows in found.items():
        ids = [i for i, _ in rows]
        report.add(
            "vectors",
            f"{len(rows)} indexed images have {why} (e.g. {rows[0][1]})",
            len(rows),
            fix=partial(_reembed, lib, ids),
        )
    return {i for rows in found.values() for i, _ in rows}


def _damaged(lib: Library, rows: list[Any]) -> list[tuple[str, Any]]:
    size = lib.dim * 4
    out, whole = [], []
    for r in rows:
        if r.vector is None:
            out.append(("no stored vector", r))
        elif len(r.vector) != size:
            out.append((f"a stored vector that is not {lib.dim} float32 values", r))
        elif r.model != lib.model:
            out.append((f"a vector of another model than {lib.model}", r))
        else:
            whole.append(r)
    x = images.stack_blobs([r.vector for r in whole], lib.dim)
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
    for r, ok, norm in zip(whole, finite, norms, strict=True):
        if not ok:
            out.append(("a vector that is not finite (NaN or infinity)", r))
        elif abs(norm - 1.0) > UNIT_TOLERANCE:
            out.append(("a vector that is not of unit length", r))
    return out


def _reembed(lib: Library, ids: list[int]) -> str:
    """Make rows pending so the next pass embeds their files again (they leave the index)."""
    lib.cache.load()  # caught up before this change commits
    with lib.engine.begin() as conn:
        images.forget_vectors(conn, ids, REEMBED_REASON, retry_after=time.time())
    lib.cache.catch_up()
    lib.cache.save()
    return "out of the index, pending: `imgindex index` (or the daemon) embeds them again"


# --- work that never gets done ----------------------------------------------------------------


def _stuck(lib: Library, report: CheckReport) -> None:
    now = time.time()
    daemon = "daemon" in (store.lock_holder(lib.paths.lock) or "")
    with lib.engine.connect() as conn:
        roots = root_paths(conn)
        queued = queue.entries(conn)
        never = images.pending_never_retried(conn)
        late = images.count_pending_due_before(conn, now - OVERDUE_S)
    outside = [r.path for r in queued if not _under_any(r.path, roots)]
    if outside:
        report.add(
            "queue",
            f"{len(outside)} queued paths are outside every root (e.g. {outside[0]})",
            len(outside),
            fix=partial(_unqueue, lib, outside),
        )
    overdue = [r.path for r in queued if r.due_at < now - OVERDUE_S and r.path not in outside]
    if overdue and daemon:
        report.add(
            "queue",
            f"{len(overdue)} queued paths are overdue by more than {OVERDUE_S / 3600:g} h "
            f"although the daemon runs (e.g. {overdue[0]})",
            len(overdue),
            action="see the daemon's log; restarting it rescans every root",
        )
    elif overdue:
        report.add(
            "queue",
            f"{len(overdue)} queued paths wait for a daemon that is not running "
            f"(e.g. {overdue[0]})",
            len(overdue),
            fix=partial(_unqueue, lib, overdue),
            action="repairable: `imgindex check --repair` drops them (the next `imgindex index`"
            " or daemon start rescans every root), or start the daemon",
        )
    if never:
        report.add(
            "pending",
            f"{len(never)} pending images have no retry time: the daemon never retries them",
            len(never),
            fix=partial(_release, lib, list(never)),
        )
    if late and daemon:
        report.add(
            "pending",
            f"{late} pending images are overdue for a retry by more than "
            f"{OVERDUE_S / 3600:g} h although the daemon runs",
            late,
            action="see the daemon's log; `imgindex index` retries every pending image",
        )


def _under_any(path: str, roots: list[Path]) -> bool:
    return any(is_under(path, r) for r in roots)


def _unqueue(lib: Library, paths: list[str]) -> str:
    with lib.engine.begin() as conn:
        queue.remove(conn, paths)
    return "dropped from the queue"


def _release(lib: Library, ids: list[int]) -> str:
    with lib.engine.begin() as conn:
        images.retry_now(conn, ids, time.time())
    return "due for a retry now"


# --- the FAISS cache --------------------------------------------------------------------------


def _cache(lib: Library, report: CheckReport, damaged: set[int], rebuild: Callable) -> None:
    for _attempt in range(3):
        files = sorted(index_files(lib.paths.root))
        if not files:
            if report.indexed:
                report.add(
                    "cache",
                    "no saved vector index: every command builds one in memory",
                    fix=rebuild,
                )
            return
        (seq, path), older = files[-1], files[:-1]
        report.cache_file = path.name
        if older:
            report.add(
                "files",
                f"{len(older)} superseded index files are left ({older[0][1].name})",
                len(older),
                fix=partial(_remove, [p for _, p in older]),
            )
        if _cache_file(lib, report, seq, path, damaged, rebuild):
            return
        report.problems = [p for p in report.problems if p.area not in ("cache", "files")]
    report.add("cache", "the index files keep changing (a writer is saving): check again later")


def _cache_file(
    lib: Library, report: CheckReport, seq: int, path: Path, damaged: set[int], rebuild: Callable
) -> bool:
    """Check the newest file; False when the writer replaced it meanwhile (check again)."""
    with lib.engine.connect() as conn:
        record = FileRecord.from_json(meta.cache_record(conn, path.name))
    try:
        why = (
            "no checksum was recorded for it (saved by an older imgindex, or copied in)"
            if record is None
            else record.mismatch(path, lib.library_id, full=True)
        )
        index = None if why else read_file(path)
    except FileNotFoundError:
        return False  # replaced by a newer one while we looked
    except RuntimeError as exc:
        why, index = f"FAISS cannot read it ({exc})".splitlines()[0], None
    if index is None:
        report.add("cache", f"{path.name}: {why}; commands ignore it", fix=rebuild)
        return True
    if index.d != lib.dim:
        report.add("cache", f"{path.name} holds {index.d}-d vectors, not {lib.dim}", fix=rebuild)
        return True
    with snapshot(lib.engine) as conn:  # one snapshot of the log and the rows
        head, trimmed = changes.log_position(conn)
        at = changes.LogPosition(seq, record.xmin if record is not None else 0)
        if not changes.replayable(at, head, trimmed):
            if at.seq <= head.seq and at.xmin <= head.xmin:
                return False  # a newer file was saved and the log trimmed while we looked
            report.add("cache", f"{path.name} is ahead of the database's changes log", fix=rebuild)
            return True
        changed = changes.logged_since(conn, at)
        indexed = images.indexed_ids(conn)
        _holds(lib, report, conn, index, path.name, changed, indexed, damaged, rebuild)
    return True


def _holds(
    lib: Library,
    report: CheckReport,
    conn: Any,
    index: Any,
    name: str,
    changed: np.ndarray,
    indexed: np.ndarray,
    damaged: set[int],
    rebuild: Callable,
) -> None:
    """The file holds the indexed ids, each once, with their stored vectors (ids changed
    since it was saved aside: readers mask them and search their current vectors)."""
    held = ids_in(index)
    twice = len(held) - len(np.unique(held))
    base = np.setdiff1d(held, changed)
    want = np.setdiff1d(indexed, changed)
    missing = np.setdiff1d(want, base)
    extra = np.setdiff1d(base, want)
    if twice:
        report.add("cache", f"{name} holds {twice} ids more than once", twice, fix=rebuild)
    if len(missing):
        report.add(
            "cache", f"{name} lacks {len(missing)} indexed images", len(missing), fix=rebuild
        )
    if len(extra):
        report.add(
            "cache",
            f"{name} holds {len(extra)} images that are not indexed (deleted or failed)",
            len(extra),
            fix=rebuild,
        )
    common = np.setdiff1d(np.intersect1d(base, want), np.fromiter(damaged, np.int64))
    exact = faiss.try_extract_index_ivf(index) is None
    off = 0
    for i in range(0, len(common), CHUNK):
        ids, stored = images.vectors_for(conn, common[i : i + CHUNK].tolist(), lib.dim)
        got = vectors_in(index, ids)
        if exact:
            off += int((np.abs(got - stored).max(axis=1, initial=0) > EXACT_TOLERANCE).sum())
        else:
            cos = (got * stored).sum(1) / np.maximum(np.linalg.norm(got, axis=1), 1e-12)
            off += int((cos < DECODED_MIN_COSINE).sum())
    if off:
        report.add(
            "cache",
            f"{name} disagrees with the stored vectors of {off} images",
            off,
            fix=rebuild,
        )


def _rebuild_cache(lib: Library) -> str:
    saved = lib.cache.rebuild().path
    return f"rebuilt from the database and saved as {saved.name if saved else '(nothing)'}"


def _leftovers(lib: Library, report: CheckReport) -> None:
    """Temporary files of an interrupted save (only when no writer may be writing one)."""
    if store.lock_holder(lib.paths.lock) and not lib.writable:
        return
    temps = sorted(lib.paths.root.glob(".vectors.*.tmp"))
    if temps:
        report.add(
            "files",
            f"{len(temps)} temporary index files are left ({temps[0].name})",
            len(temps),
            fix=partial(_remove, temps),
        )


def _remove(paths: list[Path]) -> str:
    for p in paths:
        p.unlink(missing_ok=True)
    return "removed"


# --- repairing --------------------------------------------------------------------------------


def _repair(lib: Library, report: CheckReport) -> None:
    """Run each fix once (the cache first: later fixes change the rebuilt index)."""
    done: dict[int, tuple[bool, str]] = {}
    for p in sorted(report.problems, key=lambda p: p.area != "cache"):
        if p.fix is None:
            continue
        key = id(p.fix)  # the cache's problems share one rebuild
        if key not in done:
            try:
                done[key] = (True, p.fix())
            except ImgIndexError as exc:
                done[key] = (False, f"not repaired: {exc}")
        p.repaired, p.action = done[key]
