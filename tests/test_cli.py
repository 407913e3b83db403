"""The CLI end to end with the torch-free ``thumbnail`` model: real SQLite and FAISS files."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import cli, cli_json, query, run_process
from imaging import make_photos

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL

#: The refusal to open a library that is not there (a data dir's file, or a server's database).
NO_LIBRARY = re.compile(r"error: (no library in |database \S+ on \S+ holds no imgindex library)")


@pytest.fixture()
def library(tmp_path: Path) -> tuple[Path, Path]:
    """A library of 12 red and 12 blue pictures, indexed, with k=2."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 12)
    make_photos(photos / "blues", "blue", 12, fmt="PNG")
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    return photos, data


def test_index_then_status_counts_every_image(library):
    photos, data = library
    status = cli_json(data, "status")
    assert status["indexed"] == 24 and status["index_size"] == 24
    assert status["failed"] == 0 and status["pending"] == 0
    assert status["model"] == "thumbnail" and status["k"] == "2" and status["clusters"] == 2
    assert status["roots"][0]["path"] == str(photos.resolve())
    assert status["embedded_total"] == 24


def test_similar_returns_the_same_family_with_cosine_scores(library):
    photos, data = library
    query = photos / "reds" / "red_000.jpg"
    matches = cli_json(data, "similar", query, "-k", "5")
    assert len(matches) == 5
    assert all(Path(m["path"]).is_absolute() and "/reds/" in m["path"] for m in matches)
    assert str(query.resolve()) not in [m["path"] for m in matches]
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    text = cli(data, "similar", query, "-k", "2").stdout.splitlines()
    assert len(text) == 2 and "/reds/" in text[0]


def test_similar_embeds_a_photo_outside_the_library(library, tmp_path):
    _, data = library
    outside = make_photos(tmp_path / "elsewhere", "blue", 1, start=100)[0]
    matches = cli_json(data, "similar", outside, "-k", "3")
    assert len(matches) == 3 and all("/blues/" in m["path"] for m in matches), matches


def test_clusters_split_the_families_and_show_lists_members(library):
    _, data = library
    clusters = cli_json(data, "clusters", "--list")
    assert sorted(c["size"] for c in clusters) == [12, 12]
    for c in clusters:
        family = "/reds/" if "/reds/" in c["representatives"][0] else "/blues/"
        shown = cli_json(data, "clusters", "show", str(c["id"]))
        assert shown["id"] == c["id"] and len(shown["members"]) == 12
        assert all(family in m["path"] for m in shown["members"])
    assert "error: no cluster 999" in cli(data, "clusters", "show", "999", code=1).stderr


def test_second_run_over_unchanged_tree_embeds_nothing(library):
    _, data = library
    report = cli_json(data, "index")
    assert report["embedded"] == 0 and report["unchanged"] == 24
    assert cli_json(data, "status")["embedded_total"] == 24


def test_moves_and_renames_reuse_vectors_and_deletions_disappear(library):
    photos, data = library
    shutil.move(photos / "reds", photos / "archive")
    (photos / "blues" / "blue_000.png").rename(photos / "blues" / "renamed.png")
    (photos / "blues" / "blue_001.png").unlink()
    report = cli_json(data, "index")
    assert report["embedded"] == 0 and report["moved"] == 13 and report["removed"] == 1
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 23
    assert status["embedded_total"] == 24
    found = cli_json(data, "similar", photos / "archive" / "red_003.jpg", "-k", "30")
    paths = {m["path"] for m in found}
    assert str((photos / "blues" / "renamed.png").resolve()) in paths
    assert not any("/reds/" in p or "blue_001" in p for p in paths)
    members = [
        m["path"]
        for c in cli_json(data, "clusters", "--list")
        for m in cli_json(data, "clusters", "show", str(c["id"]))["members"]
    ]
    assert len(members) == 23 and not any("blue_001" in p for p in members)


def test_copies_reuse_the_vector_and_changed_files_are_embedded_again(library):
    photos, data = library
    shutil.copy(photos / "reds" / "red_000.jpg", photos / "copy.jpg")
    target = photos / "blues" / "blue_002.png"
    make_photos(photos / "tmp", "red", 1, start=50, fmt="PNG")[0].replace(target)
    report = cli_json(data, "index")
    assert report["reused"] == 1 and report["embedded"] == 1
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 25
    assert status["embedded_total"] == 25
    top = cli_json(data, "similar", photos / "reds" / "red_000.jpg", "-k", "1")[0]
    assert top["path"] == str((photos / "copy.jpg").resolve()) and top["score"] > 0.999


def test_bad_files_are_recorded_with_a_reason_and_retried_when_they_change(library):
    photos, data = library
    (photos / "notes.jpg").write_bytes(b"this is not an image at all")
    (photos / "half.jpg").write_bytes((photos / "reds" / "red_000.jpg").read_bytes()[:900])
    old = time.time() - 3600
    os.utime(photos / "half.jpg", (old, old))
    report = cli_json(data, "index")
    assert report["failed"] == 2
    failed = {Path(f["path"]).name: f for f in cli_json(data, "status", "--failed")}
    assert set(failed) == {"notes.jpg", "half.jpg"}
    assert "not an image" in failed["notes.jpg"]["reason"]
    assert "truncated" in failed["half.jpg"]["reason"]
    assert cli_json(data, "index")["failed"] == 0  # unchanged failures are not retried
    shutil.copy(photos / "reds" / "red_001.jpg", photos / "notes.jpg")
    assert cli_json(data, "index")["reused"] == 1
    assert [Path(f["path"]).name for f in cli_json(data, "status", "--failed")] == ["half.jpg"]


def test_a_recently_written_truncated_file_is_retried_not_condemned(library):
    photos, data = library
    growing = photos / "growing.png"
    make_photos(photos / "src", "green", 1, fmt="PNG")[0].replace(growing)
    complete = growing.read_bytes()
    growing.write_bytes(complete[: len(complete) // 2])
    report = cli_json(data, "index")
    assert report["pending"] == 1 and report["failed"] == 0
    status = cli_json(data, "status")
    assert status["pending"] == 1
    growing.write_bytes(complete)
    report = cli_json(data, "index")
    assert report["embedded"] == 1 and report["unchanged"] == 24
    status = cli_json(data, "status")
    assert (status["pending"], status["failed"], status["indexed"]) == (0, 0, 25)
    assert status["index_size"] == 25 and status["embedded_total"] == 25  # the rest untouched


def test_user_errors_are_one_line_without_traceback(tmp_path, library, backend):
    photos, data = library
    cases = [
        (data, ["similar", tmp_path / "missing.jpg"], "no such file"),
        (data, ["init", photos, "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (data, ["init", photos, "--model", "efficientnet_lite0"], "imgindex reindex --model"),
        (data, ["init", tmp_path / "nope"], "no such folder"),
        (data, ["init", photos, "--k", "many"], "--k many"),
    ]
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    cases.append((data, ["similar", bad], "not an image"))
    if backend == "sqlite":  # with a database named, any data dir is a reader of that one
        cases.append((tmp_path / "nothing-here", ["status"], "no library in"))
    for data_dir, args, needle in cases:
        result = cli(data_dir, *args, code=1)
        assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""


@pytest.mark.slow  # real processes
def test_similar_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path, library):
    """A folder, a FIFO nobody writes to and /dev/zero: one error line each, at once."""
    photos, data = library
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    cases = [
        (photos / "reds", "is a directory"),
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
    ]
    for target, needle in cases:
        result = run_process("--data-dir", data, "similar", target, timeout=60)
        assert result.returncode == 1 and needle in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: {target}: ") and result.stderr.count("\n") == 1


def test_a_second_writer_is_refused_while_the_lock_is_held(library):
    from imgindex.library import Library

    _, data = library
    with Library.open(data, write=True, purpose="test holder"):
        result = cli(data, "index", code=1)
        assert "being written by pid" in result.stderr and "test holder" in result.stderr
        assert cli_json(data, "status")["indexed"] == 24  # readers still work
    cli(data, "index")


@pytest.mark.slow  # real processes
def test_subprocess_errors_and_verbose_traceback(tmp_path):
    result = run_process("--data-dir", tmp_path / "none", "status")
    assert result.returncode == 1 and NO_LIBRARY.match(result.stderr)
    assert "Traceback" not in result.stderr
    verbose = run_process("--data-dir", tmp_path / "none", "--verbose", "status")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_data_dir_comes_from_the_environment(tmp_path, library):
    _, data = library
    result = run_process("status", "--json", env={"IMGINDEX_DATA_DIR": str(data)})
    assert result.returncode == 0 and '"indexed": 24' in result.stdout


@pytest.mark.slow  # a real process
def test_similar_on_an_indexed_photo_does_not_import_torch(library):
    photos, data = library
    code = (
        "import sys\n"
        "from imgindex.cli import main\n"
        f"sys.argv = ['imgindex', '--data-dir', {str(data)!r}, 'similar', "
        f"{str(photos / 'reds' / 'red_000.jpg')!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = [m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "/reds/" in result.stdout


def test_reindex_switches_model_without_mixing_vectors(library):
    _photos, data = library
    result = cli(data, "reindex", "--model", "nonexistent", code=1)
    assert "unknown model" in result.stderr
    cli(data, "reindex", "--model", "thumbnail")
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 24 and status["model"] == "thumbnail"
    assert status["embedded_total"] == 48
    models = query(data, "SELECT DISTINCT model, length(vector) FROM images")
    assert models == [("thumbnail", 192 * 4)]


def test_a_missing_or_emptied_root_is_frozen_not_emptied(library, tmp_path):
    photos, data = library
    photos.rename(tmp_path / "unplugged")
    report = cli_json(data, "index")
    assert report["removed"] == 0 and report["frozen"] == [str(photos.resolve())]
    assert cli_json(data, "status")["indexed"] == 24
    assert cli_json(data, "status")["roots"][0]["available"] is False
    photos.mkdir()  # an empty mount point
    assert cli_json(data, "index")["removed"] == 0
    assert cli_json(data, "status")["indexed"] == 24
    photos.rmdir()
    (tmp_path / "unplugged").rename(photos)
    report = cli_json(data, "index")
    assert report["unchanged"] == 24 and report["embedded"] == 0


def test_index_can_be_limited_to_a_folder_under_a_root(library, tmp_path):
    photos, data = library
    make_photos(photos / "reds", "red", 2, start=200)
    make_photos(photos / "blues", "blue", 3, start=200)
    report = cli_json(data, "index", photos / "reds")
    assert report["embedded"] == 2 and report["seen"] == 14
    outside = tmp_path / "outside"
    outside.mkdir()
    result = cli(data, "index", outside, code=1)
    assert "not under any root" in result.stderr and "imgindex init" in result.stderr


def test_default_data_dir_follows_systemd_then_xdg(tmp_path, monkeypatch):
    from imgindex.paths import resolve_data_dir

    monkeypatch.delenv("IMGINDEX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert resolve_data_dir() == tmp_path / "xdg" / "imgindex"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert resolve_data_dir() == tmp_path / "state"
    monkeypatch.setenv("IMGINDEX_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"


@pytest.mark.slow  # the default model: torch
def test_index_dir_without_a_library_creates_one_with_k_auto_and_says_so(tmp_path):
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "reds", "red", 3)
    make_photos(photos / "blues", "blue", 3)
    refused = run_process("--data-dir", data, "index")  # no DIR: nothing to make one of
    assert refused.returncode == 1 and NO_LIBRARY.match(refused.stderr)
    assert "imgindex index DIR" in refused.stderr and not data.exists()
    done = run_process("--data-dir", data, "index", photos)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"no library in {data}: created one with model efficientnet_lite0, k auto, "
        f"roots {photos.resolve()} (`imgindex init` changes these)"
    )
    assert lines[-1].startswith("6 files: 6 embedded") and len(lines) == 3, lines
    status = cli_json(data, "status")
    assert (status["model"], status["k"], status["indexed"]) == ("efficientnet_lite0", "auto", 6)
    assert [r["path"] for r in status["roots"]] == [str(photos.resolve())]
    again = run_process("--data-dir", data, "index", photos)
    assert again.returncode == 0 and "created" not in again.stderr
    assert "6 unchanged" in again.stderr


@pytest.mark.sqlite_only
def test_index_dir_refuses_a_database_that_is_empty_or_not_a_library(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, "red", 2)
    for name, content in (("empty", b""), ("damaged", b"SQLite format 3\x00" + b"\x17" * 200)):
        data = tmp_path / name
        data.mkdir()
        (data / "imgindex.db").write_bytes(content)
        result = cli(data, "index", photos, code=1)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, name
        assert "created" not in result.stderr
        assert (data / "imgindex.db").read_bytes() == content  # left as it was


@pytest.mark.sqlite_only
def test_a_test_never_sees_the_users_home_or_systemd(isolated_environment, tmp_path):
    """The autouse fixture in conftest.py: a library made without --data-dir, by a real
    process, lands in the test's home; no variable of the user's shell or unit leaks in."""
    from conftest import REMOVED

    assert Path.home() == isolated_environment
    assert not [name for name in REMOVED if name in os.environ]
    photos = tmp_path / "photos"
    make_photos(photos, "red", 1)
    result = run_process("init", photos, "--model", "thumbnail")
    assert result.returncode == 0, result.stderr
    assert (isolated_environment / ".local" / "share" / "imgindex" / "imgindex.db").is_file()


def test_swapping_two_names_embeds_nothing_and_keeps_both(library):
    photos, data = library
    a, b = photos / "reds" / "red_000.jpg", photos / "blues" / "blue_000.png"
    tmp = photos / "swap.tmp"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    report = cli_json(data, "index")
    assert report["embedded"] == 0 and report["pending"] == 0
    status = cli_json(data, "status")
    assert status["indexed"] == status["index_size"] == 24


@pytest.mark.slow  # loads torch
def test_failed_reindex_leaves_the_library_as_it_was(library, monkeypatch):
    _, data = library
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
    result = cli(data, "reindex", "--model", "mobilenet_v2", code=1)
    assert "cannot download weights" in result.stderr and "--weights" in result.stderr
    status = cli_json(data, "status")
    assert status["model"] == "thumbnail" and status["indexed"] == 24 and status["clusters"] == 2


def test_a_copy_of_a_file_on_an_unplugged_root_does_not_steal_its_row(tmp_path):
    usb, home, data = tmp_path / "usb", tmp_path / "home", tmp_path / "data"
    make_photos(usb, "red", 3)
    make_photos(home, "blue", 3)
    cli(data, "init", usb, home, "--model", "thumbnail", "--k", "2")
    cli(data, "index")
    usb.rename(tmp_path / "unplugged")
    shutil.copy(tmp_path / "unplugged" / "red_000.jpg", home / "copy.jpg")
    report = cli_json(data, "index")
    assert report["moved"] == 0 and report["reused"] == 1 and report["frozen"] == [str(usb)]
    assert cli_json(data, "status")["indexed"] == 7


@pytest.mark.slow  # real processes
def test_usage_errors_are_one_line(tmp_path):
    from helpers import run_process

    result = run_process("--data-dir", tmp_path, "clusters", "show", "abc")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    result = run_process("--data-dir", tmp_path, "index", "--workers", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
