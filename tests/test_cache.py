"""The FAISS cache is tied to its library and content, `imgindex check` verifies (and repairs)
a library, and a full disk is one `error:` line: real CLI, real daemon, real files (a small
tmpfs for the full disk)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import DaemonProcess, status, wait_for
from helpers import cli, cli_json, run_process
from imaging import draw, make_photos
from mounts import small_tmpfs

from imgindex.db.images import stack_blobs
from imgindex.db.schema import images
from imgindex.library import Library
from imgindex.vindex import index_files

DIM = 192  # the thumbnail model's


def library(tmp_path: Path, name: str, families: dict[str, int]) -> tuple[Path, Path]:
    """An indexed library of 12 photos per family (drawn from seeds on), thumbnail model."""
    photos, data = tmp_path / f"{name}-photos", tmp_path / f"{name}-data"
    for family, first in families.items():
        make_photos(photos, family, 12, start=first)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "3")
    cli(data, "index")
    return photos, data


def the_file(data: Path) -> Path:
    ((_, path),) = index_files(data)
    return path


def exact_top(data: Path, photo: Path, k: int) -> list[str]:
    """The true ``k`` nearest neighbours of an indexed photo, from the vectors in SQLite."""
    with sqlite3.connect(data / "imgindex.db") as conn:
        rows = conn.execute("SELECT path, vector FROM images WHERE status='indexed'").fetchall()
    x = stack_blobs([v for _, v in rows], DIM)
    q = x[[p for p, _ in rows].index(str(photo.resolve()))]
    order = [i for i in np.argsort(-(x @ q), kind="stable") if rows[i][0] != str(photo.resolve())]
    return [rows[i][0] for i in order[:k]]


def answers_are_exact(data: Path, photos: list[Path], k: int = 5) -> bool:
    """Whether `similar` finds the true top ``k`` of each photo."""
    for photo in photos:
        got = [m["path"] for m in cli_json(data, "similar", photo, "-k", str(k))]
        if got != exact_top(data, photo, k):
            return False
    return True


def stderr_of_similar(data: Path, photo: Path) -> list[str]:
    """What a real `imgindex similar` process says on stderr."""
    done = run_process("--data-dir", data, "similar", photo)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def scribble(path: Path) -> None:
    """Overwrite bytes in the middle of a file, as a bad disk or a stray write would."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2 - 2000)
        fh.write(np.full(1000, 0.5, np.float32).tobytes())


# --- defect 2: a damaged or foreign file is never served ----------------------------------------


@pytest.mark.slow  # real processes
def test_a_scribbled_index_file_is_not_served_and_index_rebuilds_it(tmp_path):
    photos, data = library(tmp_path, "a", {"red": 0, "blue": 0, "green": 0})
    queries = sorted(photos.glob("*.jpg"))[::4]
    assert answers_are_exact(data, queries)
    path = the_file(data)
    scribble(path)
    damaged = path.read_bytes()

    assert answers_are_exact(data, queries)  # a reader ignores the file, builds in memory
    (line,) = stderr_of_similar(data, queries[0])  # and says so once
    assert line.startswith("WARNING") and f"ignoring {path}" in line and "checksum" in line
    assert path.read_bytes() == damaged and the_file(data) == path  # readers never write it

    cli(data, "index")  # the writer rebuilds and saves a verified file
    assert stderr_of_similar(data, queries[0]) == []
    assert answers_are_exact(data, queries)
    assert cli_json(data, "check")["ok"]


@pytest.mark.slow  # real processes
def test_another_librarys_file_with_the_same_number_is_not_served(tmp_path):
    photos, data = library(tmp_path, "a", {"red": 0, "blue": 0, "green": 0})
    _, other = library(tmp_path, "b", {"red": 40, "blue": 40, "green": 40})  # same ids, count
    mine, theirs = the_file(data), the_file(other)
    assert mine.name == theirs.name
    shutil.copyfile(theirs, mine)

    queries = sorted(photos.glob("*.jpg"))[1::4]
    assert answers_are_exact(data, queries)
    (line,) = stderr_of_similar(data, queries[0])
    assert f"ignoring {mine}" in line
    report = json.loads(cli(data, "check", "--json", code=1).stdout)
    assert [p["area"] for p in report["problems"]] == ["cache"]
    assert "checksum" in report["problems"][0]["what"]
    cli(data, "index")
    assert stderr_of_similar(data, queries[0]) == []
    assert answers_are_exact(data, queries)


def test_check_reports_and_repairs_what_it_can(tmp_path):
    photos, data = library(tmp_path, "a", {"red": 0, "blue": 0})
    healthy = cli_json(data, "check")
    assert healthy["ok"] and healthy["problems"] == [] and healthy["indexed"] == 24
    nan, long = (str(p.resolve()) for p in sorted(photos.glob("*.jpg"))[:2])
    with sqlite3.connect(data / "imgindex.db") as conn:
        conn.execute(
            "UPDATE images SET vector = ? WHERE path = ?",
            (np.full(DIM, np.nan, np.float32).tobytes(), nan),
        )
        conn.execute(
            "UPDATE images SET vector = ? WHERE path = ?",
            (np.ones(DIM, np.float32).tobytes(), long),
        )
        conn.execute(
            "INSERT INTO queue (host, path, due_at, enqueued_at)"
            " VALUES ('', '/elsewhere/x.jpg', 0, 0)"
        )
        conn.execute(
            "INSERT INTO images (host, path, root_id, size, mtime_ns, status, reason, updated_at)"
            " VALUES ('', ?, 1, 1, 1, 'pending', 'waiting', 0)",
            (str(photos / "gone.jpg"),),
        )
    scribble(the_file(data))
    before = sorted(p.name for p in data.iterdir())

    found = cli(data, "check", "--json", code=1)  # read-only: nothing changes
    report = json.loads(found.stdout)
    assert not report["ok"] and report["repaired"] == 0
    areas = sorted(p["area"] for p in report["problems"])
    assert areas == ["cache", "pending", "queue", "vectors", "vectors"], report
    assert sorted(p.name for p in data.iterdir()) == before

    fixed = json.loads(cli(data, "check", "--repair", "--json").stdout)
    assert fixed["ok"] and fixed["repaired"] == 5, fixed
    again = cli_json(data, "check")
    assert again["ok"] and again["problems"] == [] and again["indexed"] == 22
    cli(data, "index")  # the damaged two are embedded again, the missing one goes
    assert cli_json(data, "check")["indexed"] == 24
    assert cli_json(data, "status")["pending"] == 0
    assert answers_are_exact(data, sorted(photos.glob("*.jpg"))[:6])


def test_check_finds_a_file_that_verifies_but_lacks_an_image(tmp_path):
    """A logically wrong file (as a bug would save it) is caught by content, not checksum."""
    _, data = library(tmp_path, "a", {"red": 0, "blue": 0})
    with Library.open(data, write=True) as lib:
        vi = lib.cache.load()
        vi.remove(vi.ids()[:1])
        vi.path = None  # saved again at the same position: recorded, but one image short
        lib.cache.save()
    report = cli(data, "check", code=1).stdout
    assert "lacks 1 indexed images" in report
    assert cli_json(data, "check", "--repair")["ok"]
    assert cli_json(data, "check")["problems"] == []


def test_check_compares_an_ivf_file_with_the_stored_vectors(tmp_path):
    """A change the log lost leaves the file disagreeing with SQLite (decoded IVF codes)."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    cli(data, "init", photos, "--model", "thumbnail")
    add_vectors(data, 1200)
    with Library.open(data, write=True, flat_max=500) as lib:
        assert lib.cache.load().kind.startswith("ivf")  # built and saved
    assert cli_json(data, "check")["ok"]
    other = np.zeros(DIM, np.float32)
    other[0] = 1.0
    with sqlite3.connect(data / "imgindex.db") as conn:
        conn.execute(
            "UPDATE images SET vector = ? WHERE path = '/synthetic/7.jpg'", (other.tobytes(),)
        )
        conn.execute("DELETE FROM index_log")
    assert "disagrees with the stored vectors of 1 images" in cli(data, "check", code=1).stdout
    assert cli_json(data, "check", "--repair")["ok"]
    assert cli_json(data, "check")["problems"] == []


# --- defect 3: a full disk ----------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs mounted as the data directory (root only); unmounted afterwards."""
    with small_tmpfs(tmp_path / "data", "24m") as disk:
        yield disk


def fill(disk: Path, leave: int) -> Path:
    """A file taking all the space on ``disk`` but ``leave`` bytes."""
    st = os.statvfs(disk)
    filler = disk / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - leave)
    finally:
        os.close(fd)
    return filler


def add_vectors(data: Path, n: int) -> None:
    """``n`` indexed rows with random unit vectors (paths outside the roots' folders)."""
    x = np.random.default_rng(n).normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Library.open(data) as lib, lib.engine.begin() as conn:
        conn.execute(
            images.insert(),
            [
                {"host": lib.host, "path": f"/synthetic/{i}.jpg", "root_id": 1, "size": 1,
                 "mtime_ns": 1, "status": "indexed", "model": lib.model, "vector": v.tobytes(),
                 "updated_at": 0.0}
                for i, v in enumerate(x)
            ],
        )  # fmt: skip


def no_cache_written(data: Path) -> bool:
    return not list(index_files(data)) and not list(data.glob(".vectors.*"))


@pytest.mark.daemon
def test_a_full_disk_is_one_error_line_and_the_daemon_waits_for_room(tmp_path, small_disk):
    data, photos = small_disk, tmp_path / "photos"
    make_photos(photos, "red", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    add_vectors(data, 4000)  # a 3.1 MB index file
    cli(data, "index")
    for _, path in index_files(data):
        path.unlink()
    filler = fill(data, leave=1 << 20)  # room for SQLite, not for the index

    done = run_process("--data-dir", data, "index")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot save the vector index")
    assert f"no space left on {data} (tmpfs)" in lines[0] and "it needs 3.1 MB" in lines[0]
    assert no_cache_written(data)

    for command in (["status"], ["similar", photos / "red_000.jpg"]):  # read commands
        done = run_process("--data-dir", data, *command)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert no_cache_written(data)

    with DaemonProcess(data) as daemon:
        problem = wait_for(lambda: status(data)["daemon"]["problem"], 30, daemon.log_text)
        assert f"no space left on {data}" in problem
        assert any("disk full" in m for m in daemon.messages if "READY=1" in m)
        draw("red", 99).save(photos / "new.jpg")  # it keeps indexing meanwhile
        wait_for(lambda: status(data)["indexed"] == 4005, 30, daemon.log_text)
        assert no_cache_written(data)
        filler.unlink()  # room again: saved at the next housekeeping
        wait_for(lambda: list(index_files(data)), 30, daemon.log_text)
        wait_for(lambda: status(data)["daemon"]["problem"] is None, 30, daemon.log_text)
        assert daemon.proc.poll() is None
    assert daemon.proc.returncode == 0
    assert cli_json(data, "check")["ok"]
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("no space left") == 1 and "Traceback" not in log
