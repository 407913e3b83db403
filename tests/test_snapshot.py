"""Readers answer from one consistent snapshot while a writer commits (issue 9, defect 8)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, cli_json
from imaging import draw, make_photos

K = 40  # most of the library: nearly every commit touches some of a query's candidates
READS = 100  # reads overlapping the writer (a `similar` and a `status` each); old code: ~8% bad
BUDGET_S = 240.0  # and at most this long


def _churn(files: list[Path], added: Path, round_no: int) -> None:
    """New content under the same names (the next `index` drops each row and embeds anew),
    new files in ``added`` and the last round's gone (the count changes both ways)."""
    for i, path in enumerate(files):
        draw("red", 1000 * round_no + i).save(path, "JPEG")
    for old in added.glob("*.jpg"):
        old.unlink()
    make_photos(added, "blue", 40, start=1000 * round_no + 500)


def _writer(data: Path) -> subprocess.Popen:
    """A real `imgindex index` committing one image per transaction."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "index", "--batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # a writer process re-embeds while readers ask
def test_answers_keep_their_shape_while_index_reembeds(tmp_path):
    """`similar -k N` gives N results and `status` agrees with itself in every run while a
    real `imgindex index` re-embeds, adds and removes images one commit at a time."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    churn = make_photos(photos / "churn", "red", 40)
    stable = make_photos(photos / "stable", "red", 4, start=500)  # >= 44 images at any time
    outside = make_photos(tmp_path / "elsewhere", "red", 1, start=900)[0]
    cli(data, "init", photos, "--model", "thumbnail")
    cli(data, "index")
    reads, bad, round_no = 0, [], 0
    deadline = time.monotonic() + BUDGET_S
    while reads < READS and time.monotonic() < deadline:
        round_no += 1
        _churn(churn, photos / "added", round_no)
        writer = _writer(data)
        try:
            while writer.poll() is None and reads < READS and time.monotonic() < deadline:
                query = stable[0] if reads % 2 else outside  # stored vector, or embedded here
                got = cli_json(data, "similar", query, "-k", str(K))
                status = cli_json(data, "status")
                reads += 1
                if len(got) != K:
                    bad.append(f"similar: {len(got)} results")
                if status["indexed"] != status["index_size"]:
                    bad.append(f"status: indexed {status['indexed']} != {status['index_size']}")
        finally:
            _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    assert reads >= READS, f"only {reads} reads overlapped the writer in {BUDGET_S} s"
    kinds = {k: sum(b.startswith(k) for b in bad) for k in ("similar", "status")}
    assert not bad, f"{kinds} inconsistent answers in {reads} reads: {bad[:5]}"
