"""Driving the CLI in-process (Typer's CliRunner) against real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from imgindex.cli import app


def cli(data_dir: Path, *args: str, code: int = 0, input: str | None = None) -> Any:
    """Run ``imgindex --data-dir DATA ARGS`` (``input``: its stdin); assert its exit status;
    return the result."""
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), *map(str, args)], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def cli_json(data_dir: Path, *args: str) -> Any:
    return json.loads(cli(data_dir, *args, "--json").stdout)


def run_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m imgindex ARGS`` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "imgindex", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def query(data: Path, sql: str, raw: bool = False, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``:name`` parameters) on the table of record of the library in data
    dir ``data``, SQLite or PostgreSQL alike, read the way another process would. File names
    come back as ``str`` on both (PostgreSQL keeps them as bytes), unless ``raw``: every
    binary value as bytes (vectors)."""
    from sqlalchemy import text

    from imgindex.db.engine import make_engine
    from imgindex.db.location import locate
    from imgindex.names import from_bytes
    from imgindex.paths import LibraryPaths

    engine = make_engine(locate(LibraryPaths(data)).target)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(sql), params).all()
    finally:
        engine.dispose()
    if raw:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]
    fix = lambda v: from_bytes(bytes(v)) if isinstance(v, (bytes, memoryview)) else v  # noqa: E731
    return [tuple(fix(v) for v in row) for row in rows]


def execute(data: Path, sql: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Run a writing statement on the library's table of record (both backends)."""
    from sqlalchemy import text

    from imgindex.db.engine import make_engine
    from imgindex.db.location import locate
    from imgindex.paths import LibraryPaths

    engine = make_engine(locate(LibraryPaths(data)).target)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), rows or {})
    finally:
        engine.dispose()


def row_count(data: Path) -> int:
    """Rows in the library's images table, read the way another process would (0 if busy)."""
    try:
        return int(query(data, "SELECT count(*) FROM images")[0][0])
    except Exception:
        return 0


def synthetic_row(path: str, vector: Any, model: str, **extra: Any) -> dict[str, Any]:
    """An indexed ``images`` row of a file that does not exist, for libraries of made-up vectors
    (root 1 must exist), of the one host of a SQLite library (``imgindex.hosts.LOCAL``)."""
    return {
        "host": "",
        "path": path,
        "root_id": 1,
        "size": 1,
        "mtime_ns": 1,
        "status": "indexed",
        "model": model,
        "vector": vector.tobytes(),
        "updated_at": 0.0,
        **extra,
    }


def assert_consistent(data: Path, photos: Path, decodable: int, failed: int = 1) -> None:
    """After a crash and a rerun: every decodable ``.jpg`` under ``photos`` indexed exactly once,
    in SQLite, in the FAISS file (192 dimensions: the thumbnail model) and in a cluster; the
    ``failed`` others recorded as failed; nothing pending, no temp file left."""
    from imgindex.vindex import VectorIndex

    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == decodable
    assert status["failed"] == failed and status["pending"] == 0
    rows = query(data, "SELECT id, path FROM images WHERE status = 'indexed'")
    clusters = query(data, "SELECT sum(size) FROM clusters")[0][0]
    unassigned = query(
        data, "SELECT count(*) FROM images WHERE status='indexed' AND cluster_id IS NULL"
    )[0][0]
    ids = VectorIndex.open_latest(data, 192, mmap=True).ids()
    assert len(ids) == len(set(ids.tolist())), "duplicate vectors in FAISS"
    assert sorted(ids.tolist()) == sorted(r[0] for r in rows), "FAISS and SQLite disagree"
    on_disk = {str(p.resolve()) for p in photos.rglob("*.jpg") if p.name != "broken.jpg"}
    assert {r[1] for r in rows} == on_disk
    assert clusters == decodable and unassigned == 0
    assert not list(data.glob(".vectors.*.tmp"))
