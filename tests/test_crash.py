"""Crash recovery: SIGKILL the indexer at several moments; the next run leaves SQLite, the
FAISS file and the disk in agreement (every decodable file indexed exactly once, nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_consistent, cli, row_count
from imaging import make_photos

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

CHILD = r"""
import os, signal, sys
from imgindex import ingest, vindex
from imgindex.cli import main

point, after = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after_commit":  # a batch is in SQLite, the FAISS file has not been saved
    flush = ingest.Ingestor._flush
    def _flush(self, batch):
        flush(self, batch)
        calls["n"] += 1
        if calls["n"] == after:
            die()
    ingest.Ingestor._flush = _flush
elif point == "during_save":  # killed inside the real save: temp file written, not renamed
    vindex.os.fsync = lambda fd: die()
sys.argv = ["imgindex", "--data-dir", sys.argv[3], "index", "--batch-size", "8"]
main()
"""


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path, int]:
    photos, data = tmp_path / "photos", tmp_path / "data"
    for fam in ("red", "blue", "green"):
        make_photos(photos / fam, fam, 40)
    (photos / "broken.jpg").write_bytes(b"plain text, not a picture")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    return photos, data, 120


@pytest.mark.slow  # kills real processes
@pytest.mark.parametrize(
    ("point", "after"), [("after_commit", 1), ("after_commit", 7), ("during_save", 0)]
)
def test_kill_at_a_chosen_point_then_rerun(tree, point, after):
    photos, data, decodable = tree
    child = subprocess.run(
        [sys.executable, "-c", CHILD, point, str(after), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    cli(data, "index")
    assert_consistent(data, photos, decodable)


@pytest.mark.slow  # kills real processes, many runs
def test_kill_at_random_moments_of_ingestion_then_rerun(tree):
    """Each kill lands once a random number of files are in SQLite, mid-run."""
    photos, data, decodable = tree
    rng = np.random.default_rng(7)
    partial = []
    for target in sorted(rng.integers(1, 100, size=4)):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imgindex",
                "--data-dir",
                str(data),
                "index",
                "--batch-size",
                "4",
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while row_count(data) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        partial.append(row_count(data))
        if (photos / "green").exists():  # the library must follow a move between runs
            (photos / "green").rename(photos / "green2")
    assert any(0 < n < decodable for n in partial), partial  # the kills did land mid-run
    cli(data, "index")
    assert_consistent(data, photos, decodable)
