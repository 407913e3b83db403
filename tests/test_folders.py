"""Folders under a root that turn unreadable or whose disk is unmounted keep their rows (like a
root that goes away), and a file that could not be read is tried again after a chmod.

Modes are tested on a real process that file modes apply to (``unprivileged.py``); mounts are
real tmpfs mounts (root only)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, settled, status, wait_for
from helpers import cli, cli_json
from imaging import draw, make_photos
from mounts import Mounts
from unprivileged import json_unprivileged, obey_file_modes, require_file_modes

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite and on PostgreSQL


@pytest.fixture()
def album_lib(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A root with two folders of three photos each; ``album`` is the one that gets locked."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "album", "red", 3)
    make_photos(photos / "other", "blue", 3)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    require_file_modes(tmp_path)
    return photos.resolve(), photos.resolve() / "album", data


@pytest.mark.slow  # processes without CAP_DAC_OVERRIDE
def test_a_folder_that_cannot_be_read_keeps_its_rows(album_lib):
    _photos, album, data = album_lib
    assert json_unprivileged(data, "index")["embedded"] == 6
    # 000: it cannot be listed; 644: it is listed but its files cannot be looked at
    for mode in (0o000, 0o644):
        album.chmod(mode)
        try:
            report = json_unprivileged(data, "index")
        finally:
            album.chmod(0o755)
        assert report["removed"] == 0, (mode, report)
        assert cli_json(data, "status")["indexed"] == 6
        if mode == 0:
            assert str(album) in report["frozen"]
    report = json_unprivileged(data, "index")
    assert report["unchanged"] == 6 and report["embedded"] == 0
    assert cli_json(data, "status")["embedded_total"] == 6


@pytest.mark.slow  # processes without CAP_DAC_OVERRIDE
def test_a_file_that_could_not_be_read_is_retried_after_a_chmod(album_lib):
    photos, _album, data = album_lib
    locked = photos / "locked.jpg"
    draw("green", 7).save(locked)
    locked.chmod(0)
    report = json_unprivileged(data, "index")
    assert report["embedded"] == 6 and report["failed"] == 1
    failed = cli_json(data, "status", "--failed")
    assert [f["path"] for f in failed] == [str(locked)]
    assert "Permission denied" in failed[0]["reason"]
    assert json_unprivileged(data, "index")["failed"] == 0  # unchanged: not tried again
    locked.chmod(0o644)  # the mtime does not change, the ctime does
    report = json_unprivileged(data, "index")
    assert report["embedded"] == 1 and report["failed"] == 0
    s = cli_json(data, "status")
    assert s["indexed"] == 7 and s["failed"] == 0


@pytest.mark.daemon
def test_the_daemon_keeps_rows_of_a_folder_that_turns_unreadable(album_lib, tmp_path):
    """Polling sees the locked folder's files vanish (delete events); a restart rescans."""
    _photos, album, data = album_lib
    log = tmp_path / "daemon.log"
    with DaemonProcess(data, "--poll", "0.3", preexec_fn=obey_file_modes) as d:
        wait_for(lambda: settled(data, 6), 30, d.log_text)
        album.chmod(0)
        try:
            wait_for(
                lambda: "rows are kept" in log.read_text() or status(data)["indexed"] < 6,
                20,
                d.log_text,
            )
            wait_for(lambda: status(data)["queued"] == 0, 20, d.log_text)
            assert status(data)["indexed"] == 6, d.log_text()
            d.stop()
            with DaemonProcess(data, preexec_fn=obey_file_modes) as d2:  # starts with a rescan
                wait_for(lambda: "scan done" in log.read_text().split("stopped")[-1], 30)
                assert "cannot be read" in d2.log_text()
                assert status(data)["indexed"] == 6
        finally:
            album.chmod(0o755)
    with DaemonProcess(data, preexec_fn=obey_file_modes) as d3:
        wait_for(lambda: "scan done" in log.read_text().split("stopped")[-1], 30, d3.log_text)
        wait_for(lambda: settled(data, 6), 30, d3.log_text)
    assert status(data)["embedded_total"] == 6


@pytest.mark.daemon
def test_the_daemon_retries_a_file_that_could_not_be_read_after_a_chmod(album_lib, tmp_path):
    photos, _album, data = album_lib
    with DaemonProcess(data, preexec_fn=obey_file_modes) as d:
        wait_for(lambda: settled(data, 6), 30, d.log_text)
        outside = tmp_path / "locked.jpg"
        draw("green", 7).save(outside)
        outside.chmod(0)
        outside.replace(photos / "locked.jpg")  # moved in: a creation
        wait_for(lambda: status(data)["failed"] == 1, 20, d.log_text)
        (photos / "locked.jpg").chmod(0o644)
        wait_for(lambda: settled(data, 7) and status(data)["failed"] == 0, 20, d.log_text)


@pytest.fixture()
def card(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, Mounts]]:
    """A root holding three photos and ``card``, a tmpfs with five photos mounted on it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system under a root needs root and mount(8)")
    mounts = Mounts()
    try:
        disk = tmp_path / "disk"  # the card's own file system, kept while unmounted from photos
        disk.mkdir()
        mounts.mount("-t", "tmpfs", "tmpfs", disk)
        make_photos(disk, "red", 5)
        photos, data = tmp_path / "photos", tmp_path / "data"
        make_photos(photos, "green", 3)
        point = photos / "card"
        point.mkdir()
        mounts.mount("--bind", disk, point)
        cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
        yield disk, point.resolve(), data, mounts
    finally:
        mounts.cleanup()


@pytest.mark.slow  # mounts a tmpfs
def test_an_unmounted_disk_under_a_root_keeps_its_rows(card):
    disk, point, data, mounts = card
    assert cli_json(data, "index")["embedded"] == 8
    mounts.umount(point)
    report = cli_json(data, "index")
    assert report["removed"] == 0 and report["frozen"] == [str(point)]
    assert cli_json(data, "index", point)["removed"] == 0
    assert cli_json(data, "status")["indexed"] == 8
    mounts.mount("-t", "tmpfs", "tmpfs", point)  # another, empty file system there
    assert cli_json(data, "index")["removed"] == 0
    mounts.umount(point)
    mounts.mount("--bind", disk, point)  # the card is back
    report = cli_json(data, "index")
    assert report["unchanged"] == 8 and report["embedded"] == 0 and report["frozen"] == []
    s = cli_json(data, "status")
    assert s["indexed"] == 8 and s["embedded_total"] == 8


@pytest.mark.daemon
def test_the_daemon_keeps_rows_of_an_unmounted_disk_under_a_root(card, tmp_path):
    disk, point, data, mounts = card
    log = tmp_path / "daemon.log"
    # polling sees the card's files vanish (delete events), rescans see the mount point gone
    with DaemonProcess(data, "--poll", "0.3", "--rescan-interval", "1") as d:
        wait_for(lambda: settled(data, 8), 30, d.log_text)
        mounts.umount(point)
        wait_for(
            lambda: (
                f"mount point {point} is missing" in log.read_text() or status(data)["indexed"] < 8
            ),
            20,
            d.log_text,
        )
        scans = log.read_text().count("scan done")
        wait_for(lambda: log.read_text().count("scan done") > scans, 20, d.log_text)
        wait_for(lambda: status(data)["queued"] == 0, 20, d.log_text)
        assert status(data)["indexed"] == 8, d.log_text()
        mounts.mount("--bind", disk, point)
        scans = log.read_text().count("scan done")
        wait_for(lambda: log.read_text().count("scan done") > scans + 1, 20, d.log_text)
        wait_for(lambda: settled(data, 8), 20, d.log_text)
        assert status(data)["embedded_total"] == 8
