"""Reviewing duplicates: a keeper per group by a policy, the others set aside into a quarantine
folder (their paths relative to their root kept), journaled so that ``undo`` puts every file
back. Nothing is ever deleted.

The journal is ``quarantine.jsonl`` in the data dir: one line per resolve, written and synced
before the first file moves (every move with the row of its file, vector included), and one
line per undo. The library follows the moves: the rows of the files set aside are dropped
(they left the roots) and written back by ``undo`` with their vectors, so nothing is
re-embedded.

Policies: ``largest`` (most pixels, then the largest file), ``oldest`` (earliest date taken
from EXIF, else modification time), ``most-metadata`` (most EXIF tags, then largest).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgindex import fsafe
from imgindex.db import images
from imgindex.db.roots import list_roots
from imgindex.duplicates import Group, find_duplicates
from imgindex.errors import ImgIndexError
from imgindex.library import Library

KEEP_POLICIES = ("largest", "oldest", "most-metadata")
JOURNAL_NAME = "quarantine.jsonl"
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_ORIGINAL, _DATE_TIME = 36867, 306


@dataclass(frozen=True)
class Facts:
    """What a reviewer compares: one member of a group as it is on disk."""

    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken: float | None  # EXIF date taken (seconds since the epoch), else None
    modified: float
    metadata: int  # EXIF tags
    kind: str
    score: float


@dataclass(frozen=True)
class Review:
    """A group with its keeper (the id the policy picked) and the reasons it was grouped."""

    keeper: int
    members: list[Facts]
    reason: list[str]


@dataclass
class Move:
    """One file set aside: ``src`` (in a root) to ``dest`` (in the quarantine folder)."""

    id: int
    src: str
    dest: str
    row: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Outcome:
    """What ``resolve`` or ``undo`` did (or, dry, would do)."""

    batch: str
    moved: list[dict[str, str]]
    skipped: list[dict[str, str]]
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_outside_roots(what: str, folder: Path, roots: Iterable[Path]) -> None:
    """A folder that receives files must be neither inside a root nor hold one (its files
    would be indexed again, or a root moved into itself)."""
    for root in roots:
        if fsafe.overlaps(folder.resolve(), root):
            raise ImgIndexError(
                f"{what} {folder} overlaps root {root}: choose a folder outside the roots"
            )


def check_policy(policy: str) -> str:
    if policy not in KEEP_POLICIES:
        raise ImgIndexError(f"--keep {policy}: expected one of {', '.join(KEEP_POLICIES)}")
    return policy


def review(lib: Library, policy: str, groups: list[Group] | None = None) -> list[Review]:
    """Every duplicate group with its members' facts and the keeper ``policy`` picks."""
    check_policy(policy)
    groups = find_duplicates(lib) if groups is None else groups
    with lib.engine.connect() as conn:
        rows = {
            r.id: r for r in images.rows_by_ids(conn, [m.id for g in groups for m in g.members])
        }
    out = []
    for g in groups:
        facts = [_facts(rows[m.id], m.kind, m.score) for m in g.members if m.id in rows]
        if len(facts) > 1:
            out.append(Review(keeper_of(facts, policy).id, facts, g.reason))
    return out


def keeper_of(members: list[Facts], policy: str) -> Facts:
    """The member ``policy`` keeps."""

    def largest(f: Facts) -> tuple:
        return (-(f.width or 0) * (f.height or 0), -f.size, f.path)

    if policy == "oldest":
        return min(members, key=lambda f: (f.taken or f.modified, *largest(f)))
    if policy == "most-metadata":
        return min(members, key=lambda f: (-f.metadata, *largest(f)))
    return min(members, key=largest)


def _facts(row: Any, kind: str, score: float) -> Facts:
    taken, tags = exif_facts(row.path)
    return Facts(
        id=row.id,
        path=row.path,
        size=row.size,
        width=row.width,
        height=row.height,
        taken=taken,
        modified=row.mtime_ns / 1e9,
        metadata=tags,
        kind=kind,
        score=round(score, 6),
    )


def exif_facts(path: str) -> tuple[float | None, int]:
    """``(date taken, EXIF tag count)`` of a file; ``(None, 0)`` when it has none or cannot
    be read (bad metadata never stops a review)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = exif.get_ifd(_EXIF_IFD)
            tags = len(exif) + len(sub) + len(exif.get_ifd(_GPS_IFD))
            raw = sub.get(_DATE_ORIGINAL) or exif.get(_DATE_TIME)
    except Exception:
        return None, 0
    try:
        when = dt.datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        return when.replace(tzinfo=dt.timezone.utc).timestamp(), tags
    except ValueError:
        return None, tags


# --- setting aside ----------------------------------------------------------------------------


def resolve(
    lib: Library,
    quarantine: Path,
    policy: str,
    *,
    dry_run: bool = False,
    keepers: list[int] | None = None,
) -> Outcome:
    """Move every group's non-keepers into ``quarantine`` (or, with ``keepers``, only the
    groups holding one of those ids, each keeping that one). Refuses a quarantine folder
    that overlaps a root; never overwrites a file there (that member is skipped)."""
    check_policy(policy)
    quarantine = quarantine.expanduser().absolute()
    with lib.engine.connect() as conn:
        roots = list_roots(conn)
    check_outside_roots("--quarantine", quarantine, [p for _, p in roots])
    moves, skipped = _plan(lib, quarantine, policy, roots, keepers)
    batch = uuid.uuid4().hex[:12]
    if dry_run or not moves:
        shown = [{"src": m.src, "dest": m.dest} for m in moves]
        return Outcome(batch, shown, skipped, dry_run=True)
    _journal(lib, {"op": "resolve", "batch": batch, "at": time.time(), "moves": _saved(moves)})
    done = []
    for m in moves:
        try:
            _move(Path(m.src), Path(m.dest))
            done.append(m)
        except OSError as exc:
            skipped.append({"src": m.src, "why": f"not moved: {exc.strerror or exc}"})
    with lib.engine.begin() as conn:
        images.delete_images(conn, [m.id for m in done])
    return Outcome(batch, [{"src": m.src, "dest": m.dest} for m in done], skipped)


def _plan(
    lib: Library,
    quarantine: Path,
    policy: str,
    roots: list[tuple[int, Path]],
    keepers: list[int] | None,
) -> tuple[list[Move], list[dict[str, str]]]:
    reviews = review(lib, policy)
    if keepers is not None:
        wanted = set(keepers)
        chosen = []
        for r in reviews:
            ids = {f.id for f in r.members} & wanted
            if ids:
                chosen.append(Review(min(ids), r.members, r.reason))
        if len(chosen) < len(wanted):
            raise ImgIndexError("an image to keep is in no duplicate group (the groups changed?)")
        reviews = chosen
    moves: list[Move] = []
    skipped: list[dict[str, str]] = []
    with lib.engine.connect() as conn:
        for r in reviews:
            for f in r.members:
                if f.id == r.keeper:
                    continue
                root = fsafe.root_of(f.path, roots, key=lambda rp: rp[1])
                if root is None:
                    skipped.append({"src": f.path, "why": "in no root of this host"})
                    continue
                dest = quarantine / os.path.relpath(f.path, root[1])
                if dest.exists() or dest.is_symlink():
                    skipped.append({"src": f.path, "why": f"{dest} exists already"})
                    continue
                found = images.row_as_dict(conn, f.id)
                if found is not None and Path(f.path).is_file():
                    moves.append(Move(f.id, f.path, str(dest), found))
    return moves, skipped


def _saved(moves: list[Move]) -> list[dict[str, Any]]:
    def enc(row: dict[str, Any]) -> dict[str, Any]:
        vec = row.get("vector")
        return {**row, "vector": base64.b64encode(vec).decode() if vec else None}

    return [{"id": m.id, "src": m.src, "dest": m.dest, "row": enc(m.row)} for m in moves]


def _move(src: Path, dest: Path) -> None:
    """Move one file, never over another: a rename on one file system; else a copy, synced
    and compared, before the original goes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(17, "the destination exists", str(dest))
    try:
        os.link(src, dest)  # fails rather than replace an existing file
        os.unlink(src)
        return
    except OSError as exc:
        if exc.errno not in (18, 1, 95):  # EXDEV, EPERM (no hard links), EOPNOTSUPP
            raise
    shutil.copy2(src, dest)
    with open(dest, "rb") as fh:
        os.fsync(fh.fileno())
    if not _same_bytes(src, dest):
        dest.unlink()
        raise OSError(5, "the copy differs from the original", str(src))
    os.unlink(src)


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


# --- the journal and undo ---------------------------------------------------------------------


def journal_path(lib: Library) -> Path:
    return lib.paths.root / JOURNAL_NAME


def _journal(lib: Library, entry: dict[str, Any]) -> None:
    path = journal_path(lib)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsafe.sync_folder(path.parent)


def batches(lib: Library) -> list[dict[str, Any]]:
    """The resolves not undone yet, oldest first."""
    path = journal_path(lib)
    if not path.exists():
        return []
    found: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: its files never moved
        if entry.get("op") == "resolve":
            found[entry["batch"]] = entry
        elif entry.get("op") == "undo":
            found.pop(entry.get("batch"), None)
    return list(found.values())


def undo(lib: Library, *, every: bool = False) -> list[Outcome]:
    """Put back the files of the last resolve (``every``: of all resolves not undone), newest
    first, and their rows. A file whose place is taken again is left in the quarantine folder
    and reported."""
    pending = batches(lib)
    if not pending:
        raise ImgIndexError("nothing to undo: no duplicates were set aside")
    out = []
    for entry in reversed(pending if every else pending[-1:]):
        out.append(_undo_batch(lib, entry))
    return out


def _undo_batch(lib: Library, entry: dict[str, Any]) -> Outcome:
    moved, skipped, rows = [], [], []
    for m in entry["moves"]:
        src, dest = Path(m["src"]), Path(m["dest"])
        if src.exists() and not dest.exists():
            continue  # never moved (a crash before it), or put back already
        if src.exists() or src.is_symlink():
            skipped.append({"src": m["src"], "why": f"{src} exists again; left {dest}"})
            continue
        try:
            _move(dest, src)
        except OSError as exc:
            skipped.append({"src": m["src"], "why": f"not put back: {exc.strerror or exc}"})
            continue
        moved.append({"src": m["dest"], "dest": m["src"]})
        rows.append(m["row"])
    with lib.engine.begin() as conn:
        for row in rows:
            if images.find_by_path(conn, row["path"]) is None:  # not re-indexed meanwhile
                vec = row.get("vector")
                images.restore_row(conn, {**row, "vector": base64.b64decode(vec) if vec else None})
    _journal(lib, {"op": "undo", "batch": entry["batch"], "at": time.time()})
    return Outcome(entry["batch"], moved, skipped)
