"""One row per image for spreadsheets and Tableau: path, status, cluster, map coordinates.

``rows`` gathers them (the coordinates come from :mod:`imgindex.atlas`, so the CSV, the JSON
and the HTML report agree); ``write_csv`` and ``write_json`` write them to a file or stdout.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from imgindex import fsafe, names
from imgindex.db import images
from imgindex.db.schema import STATUS_INDEXED
from imgindex.errors import ImgIndexError

FIELDS = ("path", "status", "reason", "cluster_id", "cluster_name", "x", "y", "host")
DIGITS = 5  # map coordinates are in [0, 1]


def rows(lib: Any) -> list[dict[str, Any]]:
    """Every image of the library, by path: ``FIELDS``, None where a value does not apply (the
    cluster and coordinates of images that are not indexed, the reason of indexed ones)."""
    from imgindex.atlas import library_map
    from imgindex.clusterstore import display_name
    from imgindex.db.clusters import titles

    where = library_map(lib).lookup()
    with lib.engine.connect() as conn:
        named = titles(conn)
        result = images.all_files(conn)
    out = []
    for r in result:
        xy = where.get(r.id) if r.status == STATUS_INDEXED else None
        cid = r.cluster_id if r.status == STATUS_INDEXED else None
        out.append(
            {
                "path": r.path,
                "status": r.status,
                "reason": r.reason if r.status != STATUS_INDEXED else None,
                "cluster_id": cid,
                "cluster_name": None if cid is None else display_name(cid, named.get(cid)),
                "x": None if xy is None else round(xy[0], DIGITS),
                "y": None if xy is None else round(xy[1], DIGITS),
                "host": r.host,  # whose file the path is (revision 0008; "" on a one-host library)
            }
        )
    return out


def write_csv(data: list[dict[str, Any]], fh: TextIO) -> None:
    """RFC 4180 CSV with a header row; None is an empty field."""
    writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(data)


def write_json(data: list[dict[str, Any]], fh: TextIO) -> None:
    """A JSON array of objects; None is null; paths as ``imgindex.names.dumps`` gives them."""
    fh.write(names.dumps(data, indent=1))
    fh.write("\n")


def save(dest: str, writer: Callable[[list[dict[str, Any]], TextIO], None], data: list) -> None:
    """Write ``data`` with ``writer`` to ``dest`` (``-``: stdout). A file is replaced whole
    or not at all; failing to write it is an ``ImgIndexError`` naming it."""
    if dest == "-":
        buf = io.StringIO(newline="")
        writer(data, buf)
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
        return
    write_atomically(Path(dest), lambda fh: writer(data, fh), text=True)


def write_atomically(path: Path, fill: Callable[[Any], None], *, text: bool) -> int:
    """Create ``path`` through a temporary file beside it (``fsafe.atomic_write``); its size
    in bytes. Failing to write it is an ``ImgIndexError`` naming it."""
    try:
        fsafe.atomic_write(path, fill, text=text)
        return path.stat().st_size
    except OSError as exc:
        raise ImgIndexError(f"cannot write {path}: {exc.strerror or exc}") from exc
