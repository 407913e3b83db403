"""Cluster views: one folder per cluster holding symlinks to (or copies of) its members.

``imgindex clusters export DIR`` makes or refreshes one; the daemon keeps one current when the
``view_dir`` setting is set. The originals are never touched. ``DIR/.imgindex-view.json`` (the
manifest) lists everything imgindex made in DIR: only those entries are ever removed or
replaced, and a non-empty DIR without a manifest is refused. Updates are incremental: the
wanted layout is compared with the manifest and only the differences reach the disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgindex import fsafe
from imgindex.db import Connection, images, meta
from imgindex.db.clusters import titles
from imgindex.errors import ImgIndexError

log = logging.getLogger(__name__)

MANIFEST = ".imgindex-view.json"
MODES = ("symlink", "copy")
SLUG_MAX = 60  # characters of a label in a folder name (at most 240 bytes of UTF-8)
NAME_MAX = 255  # bytes in one file name


@dataclass(frozen=True)
class Entry:
    """One file imgindex made in a view: ``kind`` "link" or "copy" of ``source``.

    ``orig``: the original's (size, mtime_ns) as indexed; ``made``: a copy's own (size,
    mtime_ns) right after copying, which is how it is recognised later."""

    source: str
    cluster: int
    kind: str
    orig: tuple[int, int]
    made: tuple[int, int] | None = None


@dataclass
class Manifest:
    entries: dict[str, Entry] = field(default_factory=dict)  # "folder/name" -> entry
    folders: set[str] = field(default_factory=set)


@dataclass
class ViewReport:
    """What one update did."""

    dir: str
    mode: str
    images: int = 0
    folders: int = 0
    added: int = 0
    moved: int = 0  # copies renamed into their new place instead of copied again
    removed: int = 0
    left: int = 0  # entries someone else changed: left alone and forgotten
    skipped: int = 0  # originals gone since they were indexed

    @property
    def changed(self) -> bool:
        return bool(self.added or self.moved or self.removed or self.left or self.skipped)


# --- names ----------------------------------------------------------------------------------


def folder_name(cluster_id: int, title: dict[str, str | None] | None) -> str:
    """``<id>-<slug of the cluster's name or label>``, or ``<id>`` alone: one safe path
    component (no separators, dots, control characters; capped length)."""
    title = title or {}
    text = unicodedata.normalize("NFKC", title.get("name") or title.get("label") or "")
    slug = re.sub(r"\W+", "-", text).strip("-_")[:SLUG_MAX].strip("-_")
    return f"{cluster_id}-{slug}" if slug else str(cluster_id)


def _folders(rel: str) -> set[str]:
    """Every folder above an entry: ``g1-x/2-y/a.jpg`` -> ``{g1-x, g1-x/2-y}``."""
    parts = rel.split("/")[:-1]
    return {"/".join(parts[: i + 1]) for i in range(len(parts))}


def numbered(name: str, n: int) -> str:
    """``IMG.jpg`` -> ``IMG (n).jpg``, the stem shortened to keep within NAME_MAX bytes."""
    if n == 1:
        return name
    stem, ext = os.path.splitext(name)
    tail = f" ({n}){ext}"
    while stem and len(os.fsencode(stem + tail)) > NAME_MAX:
        stem = stem[:-1]
    return stem + tail


def _free_name(wish: str, taken: set[str]) -> str:
    """``wish``, or its first numbered variant not in ``taken`` (compared case-insensitively,
    as SMB clients do)."""
    n = 1
    while numbered(wish, n).casefold() in taken:
        n += 1
    return numbered(wish, n)


# --- planning -------------------------------------------------------------------------------


def _foreign(view_dir: Path, folder: str, old: Manifest) -> set[str]:
    """Casefolded names in a view folder that imgindex did not make."""
    try:
        names = os.listdir(view_dir / folder)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {n.casefold() for n in names if f"{folder}/{n}" not in old.entries}


def plan(conn: Connection, view_dir: Path, old: Manifest, kind: str) -> dict[str, Entry]:
    """The wanted entries. Members keep the names they had in their cluster; new ones get
    their own file name, numbered on collisions in path order (deterministic)."""
    names = titles(conn)
    groups = meta.groups(conn)
    had = {(e.cluster, e.source): rel.rpartition("/")[2] for rel, e in old.entries.items()}
    by_cluster: dict[int, list[Any]] = {}
    for row in images.clustered_files(conn):
        by_cluster.setdefault(row.cluster_id, []).append(row)
    wanted: dict[str, Entry] = {}
    for cid, rows in by_cluster.items():
        folder = folder_name(cid, names.get(cid))
        if cid in groups.of:  # nested in its group: g<group id>-<slug>/<cluster folder>
            gid = groups.of[cid]
            folder = f"g{folder_name(gid, groups.titles.get(gid))}/{folder}"
        keep = [(r, had[cid, r.path]) for r in rows if (cid, r.path) in had]
        fresh = [(r, os.path.basename(r.path)) for r in rows if (cid, r.path) not in had]
        taken = _foreign(view_dir, folder, old) if fresh else set()
        for r, wish in keep + fresh:
            name = _free_name(wish, taken)
            taken.add(name.casefold())
            wanted[f"{folder}/{name}"] = Entry(r.path, cid, kind, (r.size, r.mtime_ns))
    return wanted


# --- the manifest ---------------------------------------------------------------------------


_last_read: dict[str, tuple[tuple[int, int, int], Manifest]] = {}  # the daemon reads one often


def read_manifest(view_dir: Path) -> Manifest:
    """What imgindex made in ``view_dir``; refuses a non-empty folder it did not make."""
    path = view_dir / MANIFEST
    try:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if (hit := _last_read.get(str(path))) and hit[0] == key:
            return hit[1]
        data = json.loads(path.read_text(encoding="ascii"))
        manifest = Manifest(
            entries={
                rel: Entry(e[0], e[1], e[2], tuple(e[3]), tuple(e[4]) if e[4] else None)
                for rel, e in data["entries"].items()
            },
            folders=set(data["folders"]),
        )
        _last_read.clear()
        _last_read[str(path)] = (key, manifest)
        return manifest
    except FileNotFoundError:
        if any(not _manifest_temp(p.name) for p in view_dir.iterdir()):
            raise ImgIndexError(
                f"{view_dir} is not empty and has no {MANIFEST}, so imgindex did not make it; "
                "choose an empty or new folder"
            ) from None
        return Manifest()
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ImgIndexError(
            f"{path} is damaged ({exc}); imgindex cannot tell what it made there: "
            "empty the folder yourself or choose another one"
        ) from None


def _manifest_temp(name: str) -> bool:
    """Whether ``name`` is a temporary manifest a crash left (older versions named theirs
    ``.imgindex-view.json.tmp``)."""
    return name == f"{MANIFEST}.tmp" or fsafe.is_temp_for(name, MANIFEST)


def write_manifest(view_dir: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (ASCII JSON: any file name survives)."""
    data = {
        "version": 1,
        "folders": sorted(manifest.folders),
        "entries": {
            rel: [e.source, e.cluster, e.kind, list(e.orig), e.made and list(e.made)]
            for rel, e in sorted(manifest.entries.items())
        },
    }
    text = json.dumps(data, separators=(",", ":"))
    fsafe.atomic_write(view_dir / MANIFEST, lambda fh: fh.write(text.encode("ascii")))


@contextmanager
def _locked(view_dir: Path) -> Iterator[None]:
    """One updater per view at a time (a ``flock`` on the folder itself; some network file
    systems have none: then we go on without it)."""
    with fsafe.Flock(view_dir, folder=True, optional=True) as lock:
        if lock.try_exclusive() is not None:
            raise ImgIndexError(f"{view_dir} is being updated by another imgindex")
        yield


# --- the files ------------------------------------------------------------------------------


def is_ours(path: Path, e: Entry) -> bool:
    """Whether ``path`` still is the file imgindex made for ``e`` (a copy not yet recorded
    is recognised by the original's size and mtime, which ``copy2`` keeps)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if e.kind == "link":
        return stat.S_ISLNK(st.st_mode) and os.readlink(path) == e.source
    return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) in (e.made, e.orig)


def _same(old: Entry, new: Entry) -> bool:
    return (old.source, old.kind) == (new.source, new.kind) and (
        new.kind == "link" or old.orig == new.orig
    )


def _make(path: Path, e: Entry) -> Entry:
    """Create the link or copy; FileExistsError when the name is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if e.kind == "link":
        os.symlink(e.source, path)
        return e
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "exists", str(path))
    tmp = path.with_name(f".imgindex-partial-{os.getpid()}")
    try:
        shutil.copy2(e.source, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    st = os.lstat(path)
    return replace(e, made=(st.st_size, st.st_mtime_ns))


def _remove(path: Path, e: Entry, report: ViewReport) -> None:
    if is_ours(path, e):
        path.unlink()
        report.removed += 1
    elif os.path.lexists(path):
        report.left += 1


def _prune(view_dir: Path, folders: set[str]) -> None:
    """Remove view folders that are empty now (ones holding others' files stay)."""
    for folder in sorted(folders, key=lambda f: -f.count("/")):  # inner folders first
        try:
            (view_dir / folder).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def apply(
    view_dir: Path,
    old: Manifest,
    wanted: dict[str, Entry],
    report: ViewReport,
    *,
    verify: bool = False,
    progress: Callable[[], Any] | None = None,
) -> Manifest:
    """Make the disk match ``wanted``; returns the manifest written. ``verify``: also check
    that unchanged entries are still on disk (else only the manifest is trusted)."""
    same = {rel for rel, e in wanted.items() if rel in old.entries and _same(old.entries[rel], e)}
    if verify:
        same = {rel for rel in same if is_ours(view_dir / rel, old.entries[rel])}
    drop = {rel: e for rel, e in old.entries.items() if rel not in same}
    make = {rel: e for rel, e in wanted.items() if rel not in same}
    folders = {f for rel in wanted for f in _folders(rel)}
    if not drop and not make and folders == old.folders:
        return old
    others = {f for f in folders - old.folders if (view_dir / f).is_dir()}  # not made by us
    # written first, so a crash midway leaves nothing made that the manifest does not list
    write_manifest(view_dir, Manifest({**make, **old.entries}, (folders - others) | old.folders))
    moving = _sources(make)
    reuse = {e.source: rel for rel, e in drop.items() if e.kind == "copy" and e.source in moving}
    for rel, e in drop.items():
        if rel in make or reuse.get(e.source) != rel:
            _remove(view_dir / rel, e, report)
    done = {rel: old.entries[rel] for rel in same}
    claimed = {rel.casefold() for rel in wanted}
    for rel, e in make.items():
        if progress:
            progress()
        done.update(_place(view_dir, rel, e, drop, reuse.pop(e.source, None), report, claimed))
    for old_rel in reuse.values():
        _remove(view_dir / old_rel, drop[old_rel], report)
    kept = {f for rel in done for f in _folders(rel)}
    _prune(view_dir, (old.folders | folders) - others - kept)
    result = Manifest(done, kept)
    write_manifest(view_dir, result)
    return result


def _place(
    view_dir: Path,
    rel: str,
    e: Entry,
    drop: dict[str, Entry],
    old_rel: str | None,
    report: ViewReport,
    claimed: set[str],
) -> dict[str, Entry]:
    """Put one entry in place: an old copy of the same original is renamed, not copied
    again; a name someone else's file took is numbered. Returns ``{rel: entry}``, or
    nothing when the original is gone."""
    path = view_dir / rel
    try:
        old = drop[old_rel] if old_rel else None
        if (
            old
            and old_rel
            and _same(old, e)
            and not os.path.lexists(path)
            and is_ours(view_dir / old_rel, old)
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(view_dir / old_rel, path)
            report.moved += 1
            return {rel: old}
        if old_rel and old:
            _remove(view_dir / old_rel, old, report)
        made = _make(path, e)
    except FileExistsError:
        if not is_ours(path, e):
            alt = _another_name(view_dir, rel, e, claimed)
            log.info("%s: name taken by a file imgindex did not make; using %s", path, alt)
            return _place(view_dir, alt, e, drop, None, report, claimed)
        made = e  # made before a crash: adopt it
    except FileNotFoundError:  # the original is gone (its row goes at the next scan)
        report.skipped += 1
        return {}
    report.added += 1
    return {rel: made}


def _another_name(view_dir: Path, rel: str, e: Entry, claimed: set[str]) -> str:
    """The original's name, numbered, free on disk and in the plan; claimed at once."""
    folder, n = rel.partition("/")[0], 2
    wish = os.path.basename(e.source)
    while (alt := f"{folder}/{numbered(wish, n)}").casefold() in claimed or os.path.lexists(
        view_dir / alt
    ):
        n += 1
    claimed.add(alt.casefold())
    return alt


def _sources(entries: dict[str, Entry]) -> set[str]:
    return {e.source for e in entries.values()}


# --- entry points ---------------------------------------------------------------------------


def check_place(view_dir: Path, roots: list[Path]) -> None:
    """A view inside a photo folder (or around one) would be indexed itself: refuse it."""
    v = view_dir.resolve()
    for root in roots:
        r = root.resolve()
        if fsafe.overlaps(v, r):
            raise ImgIndexError(
                f"{view_dir} overlaps the photo folder {r}; put the view outside the roots"
            )


def export(
    lib: Any,
    view_dir: Path,
    mode: str = "symlink",
    *,
    create: bool = True,
    verify: bool = True,
    progress: Callable[[], Any] | None = None,
) -> ViewReport:
    """Create or bring up to date the view of ``lib``'s clusters in ``view_dir``."""
    if mode not in MODES:
        raise ImgIndexError(f"view mode {mode!r}: expected one of {', '.join(MODES)}")
    view_dir = Path(view_dir).absolute()
    check_place(view_dir, lib.roots())
    if create:
        view_dir.mkdir(parents=True, exist_ok=True)
    elif not view_dir.is_dir():
        raise ImgIndexError(f"{view_dir}: no such folder")
    report = ViewReport(str(view_dir), mode)
    with _locked(view_dir):
        old = read_manifest(view_dir)
        with lib.engine.connect() as conn:  # closed before any copying starts
            wanted = plan(conn, view_dir, old, "link" if mode == "symlink" else "copy")
        result = apply(view_dir, old, wanted, report, verify=verify, progress=progress)
    report.images, report.folders = len(result.entries), len(result.folders)
    return report


def _all_titles(conn: Connection) -> Any:
    """Clusters' and groups' names and labels: the view's folder names change with them."""
    return titles(conn), meta.groups(conn).titles


class ViewKeeper:
    """The daemon's view: updated after each drain, or when cluster names change; errors
    are logged (once per distinct message), never raised."""

    def __init__(self) -> None:
        self.verify = True  # check every entry on disk at the next update
        self._titles: Any = None
        self._error = ""

    def titles_changed(self, lib: Any) -> bool:
        with lib.engine.connect() as conn:
            return _all_titles(conn) != self._titles

    def update(
        self, lib: Any, view_dir: str, mode: str, progress: Callable[[], Any] | None = None
    ) -> ViewReport | None:
        if not view_dir:
            return None
        try:
            with lib.engine.connect() as conn:
                current = _all_titles(conn)
            report = export(
                lib, Path(view_dir), mode, create=False, verify=self.verify, progress=progress
            )
        except Exception as exc:
            if str(exc) != self._error:
                log.warning("the cluster view in %s was not updated: %s", view_dir, exc)
            self._error, self.verify = str(exc), True
            return None
        self._titles, self._error, self.verify = current, "", False
        if report.changed:
            log.info(
                "cluster view %s: %d added, %d moved, %d removed (%d images in %d folders)",
                view_dir,
                report.added,
                report.moved,
                report.removed,
                report.images,
                report.folders,
            )
        return report
