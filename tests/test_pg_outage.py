"""A PostgreSQL server that goes away (stopped, restarted: every connection cut) and comes back:
the daemon waits for it and loses nothing, a command says so in one line, and the next pass
completes. Each test has a server of its own (``private_postgres``) to stop."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, wait_for
from helpers import cli, cli_json, run_process
from imaging import make_photos
from pg import Server

#: A quick daemon's backoff: 0.2 s, 0.4 s, then every 0.8 s.
RETRY = ("--timing", "db_retry=0.2", "--timing", "db_retry_max=0.8")


def _library(tmp_path: Path, server: Server, photos: Path) -> Path:
    data = tmp_path / "data"
    cli(data, "--database", server.create_database(), "init", photos, "--model", "thumbnail")
    return data


def _complete(data: Path, files: int) -> bool:
    """Every file indexed once: as many rows and vectors as files, none failed or waiting."""
    s = cli_json(data, "status")
    return (s["indexed"], s["index_size"], s["failed"], s["pending"], s["queued"]) == (
        files,
        files,
        0,
        0,
        0,
    )


def _said(stderr: str) -> list[str]:
    """What a command said on stderr besides its progress bar."""
    return [line for line in stderr.splitlines() if line.strip() and line != "indexing"]


@pytest.mark.daemon
@pytest.mark.slow
def test_the_daemon_waits_out_a_stopped_server_and_loses_nothing(
    tmp_path: Path, private_postgres: Server
) -> None:
    photos = tmp_path / "photos"
    make_photos(photos / "before", "red", 4)
    data = _library(tmp_path, private_postgres, photos)
    with DaemonProcess(data, *RETRY) as daemon:
        wait_for(lambda: _complete(data, 4), 60, daemon.log_text)
        make_photos(photos / "during", "blue", 12)  # the server stops while these arrive
        time.sleep(0.5)
        private_postgres.stop()
        make_photos(photos / "while-down", "green", 6)
        wait_for(lambda: "database unreachable" in daemon.log_text(), 30, daemon.log_text)
        time.sleep(3)  # backoff rounds: none of them may log again, or end the daemon
        assert daemon.proc.poll() is None, daemon.log_text()
        log = daemon.log_text()
        assert log.count("database unreachable") == 1, log
        assert "retrying in 0.2s" in log and "Traceback" not in log
        assert any(m.startswith("STATUS=waiting for the database") for m in daemon.read_messages())

        down_at = time.monotonic()
        private_postgres.start()
        wait_for(lambda: _complete(data, 22), 60, daemon.log_text)
        print(f"back up to complete: {time.monotonic() - down_at:.1f} s")
        assert "database reachable again" in daemon.log_text()
        assert cli_json(data, "status")["daemon"]["state"] == "watching"
    check = cli_json(data, "check")
    assert check["problems"] == [], check
    sizes = sum(c["size"] for c in cli_json(data, "clusters", "--list"))
    assert sizes == 22


@pytest.mark.slow
@pytest.mark.parametrize("command", [("status",), ("similar", "photos/before/red_000.jpg")])
def test_a_command_against_a_stopped_server_is_one_error_line_naming_it(
    tmp_path: Path, private_postgres: Server, command: tuple[str, ...]
) -> None:
    photos = tmp_path / "photos"
    make_photos(photos / "before", "red", 4)
    data = _library(tmp_path, private_postgres, photos)
    cli(data, "index")
    private_postgres.stop()
    args = [str(tmp_path / a) if a.startswith("photos/") else a for a in command]
    done = run_process("--data-dir", str(data), *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: the library's database server cannot be reached")
    assert str(private_postgres.socket_dir) in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stop", "restart"])
def test_an_index_pass_cut_by_the_server_says_one_line_blames_no_file_and_the_next_completes(
    tmp_path: Path, private_postgres: Server, outage: str
) -> None:
    """Stopped mid-pass: one error line, exit 1. Restarted mid-pass (the decode workers'
    connections cut too): the pass completes, or stops with that one line. Either way no file
    is failed for it, nothing else is said, and the next pass completes."""
    photos = tmp_path / "photos"
    for family in ("red", "blue", "green"):
        make_photos(photos / family, family, 60)
    data = _library(tmp_path, private_postgres, photos)
    index = subprocess.Popen(
        [sys.executable, "-m", "imgindex", "--data-dir", str(data), "index", "--batch-size", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: cli_json(data, "status")["indexed"] > 0, 60, "no batch committed")
    if outage == "restart":
        private_postgres.restart()
        _, stderr = index.communicate(timeout=60)
    else:
        private_postgres.stop()
        _, stderr = index.communicate(timeout=60)
        private_postgres.start()
        assert index.returncode == 1, stderr
    said = _said(stderr)  # no file blamed, no one-by-one retries, no traceback: the one line
    assert index.returncode in (0, 1) and len(said) == index.returncode, stderr
    for line in said:
        assert line.startswith("error: the library's database server cannot be reached")
        assert str(private_postgres.socket_dir) in line
    assert cli_json(data, "status")["failed"] == 0

    assert cli_json(data, "index")["failed"] == 0
    assert _complete(data, 180)
    assert cli_json(data, "check")["problems"] == []
