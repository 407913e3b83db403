"""The daemon as a real subprocess: real watchdog observers, real files, real SQLite and FAISS."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import DaemonProcess, settled, status, wait_for
from helpers import cli, cli_json, query, row_count, run_process
from imaging import draw, make_photos

from imgindex.vindex import VectorIndex

pytestmark = [pytest.mark.daemon, pytest.mark.usefixtures("backend")]  # on both backends


@pytest.fixture()
def lib(tmp_path: Path) -> tuple[Path, Path]:
    photos, data = tmp_path / "photos", tmp_path / "data"
    make_photos(photos / "seed", "green", 4)
    cli(data, "init", photos, "--model", "thumbnail", "--k", "2")
    return photos, data


def faiss_matches_sqlite(data: Path) -> None:
    want = sorted(r[0] for r in query(data, "SELECT id FROM images WHERE status='indexed'"))
    have = VectorIndex.open_latest(data, 192, mmap=True).ids().tolist()
    assert sorted(have) == want and len(set(have)) == len(have)


def test_notify_protocol_and_sigterm(lib):
    _photos, data = lib
    d = DaemonProcess(data, watchdog_usec=400_000)
    d.wait_ready()
    wait_for(lambda: settled(data, 4), 30)
    wait_for(lambda: sum("WATCHDOG=1" in m for m in d.read_messages()) >= 3, 10)
    messages = d.read_messages()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=" in ready and f"MAINPID={d.proc.pid}" in ready
    wait_for(
        lambda: any(
            m.startswith("STATUS=watching: 4 indexed, 0 pending, 0 failed")
            for m in d.read_messages()
        ),
        15,
        lambda: str(d.messages),
    )
    started = time.monotonic()
    assert d.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert any("STOPPING=1" in m for m in d.messages)
    faiss_matches_sqlite(data)


def test_200_images_arrive_and_similar_works_meanwhile(lib):
    photos, data = lib
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 4), 30)
        start = time.monotonic()
        writer = threading.Thread(
            target=lambda: [make_photos(photos / "drop", fam, 100) for fam in ("red", "blue")]
        )
        writer.start()
        answered = []
        while writer.is_alive() or status(data)["indexed"] < 204:
            if (photos / "drop" / "red_000.jpg").exists():
                result = cli_json(data, "similar", photos / "drop" / "red_000.jpg", "-k", "3")
                answered.append(len(result))
            assert time.monotonic() - start < 60, status(data)
            time.sleep(0.2)
        writer.join()
        wait_for(lambda: settled(data, 204), 30)
        elapsed = time.monotonic() - start
        print(f"200 images: all returned by status/similar {elapsed:.1f} s after the first write")
        assert answered and all(n == 3 for n in answered)
        top = cli_json(data, "similar", photos / "drop" / "blue_050.jpg", "-k", "5")
        assert len(top) == 5 and all("/drop/blue_" in m["path"] for m in top), top
        assert status(data)["embedded_total"] == 204
        assert d.proc.poll() is None


def test_a_file_written_in_chunks_over_5_s_is_embedded_once_complete(lib, tmp_path):
    photos, data = lib
    buf = tmp_path / "big.png"
    draw("blue", 1, size=(1200, 900)).save(buf, "PNG")
    payload = buf.read_bytes()
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 4), 30)
        target = photos / "slow.png"
        with open(target, "wb") as fh:
            for chunk in np.array_split(np.frombuffer(payload, np.uint8), 10):
                fh.write(chunk.tobytes())
                fh.flush()
                time.sleep(0.5)
        wait_for(lambda: settled(data, 5), 20, lambda: d.log_text())
        d.wait_rounds(2)  # nothing else happens afterwards
        s = status(data)
        assert s["embedded_total"] == 5 and s["failed"] == 0
        sizes = dict(query(data, "SELECT path, size FROM images"))
        assert sizes[str(target.resolve())] == len(payload)


def test_moved_folder_is_followed_without_embedding(lib):
    photos, data = lib
    make_photos(photos / "trip", "red", 30)
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 34), 30)
        before = status(data)["embedded_total"]
        (photos / "2024").mkdir()
        shutil.move(photos / "trip", photos / "2024" / "Trip")
        (photos / "seed" / "green_000.jpg").rename(photos / "seed" / "GREEN_000.jpg")
        wanted = str((photos / "2024" / "Trip" / "red_007.jpg").resolve())

        renamed = str((photos / "seed" / "GREEN_000.jpg").resolve())

        def moved() -> bool:
            found = cli_json(data, "similar", photos / "2024" / "Trip" / "red_001.jpg", "-k", "40")
            paths = {m["path"] for m in found}
            return wanted in paths and renamed in paths and settled(data, 34)

        wait_for(moved, 20, lambda: d.log_text())
        assert status(data)["embedded_total"] == before
        paths = [r[0] for r in query(data, "SELECT path FROM images")]
        assert not any("/trip/" in p for p in paths)
        assert sum("/2024/Trip/" in p for p in paths) == 30
        assert any(p.endswith("/GREEN_000.jpg") for p in paths)


def test_deleted_files_disappear_everywhere(lib):
    photos, data = lib
    make_photos(photos / "reds", "red", 10)
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 14), 30)
        for p in sorted((photos / "reds").glob("*.jpg"))[:6]:
            p.unlink()
        shutil.rmtree(photos / "seed")
        wait_for(lambda: settled(data, 4), 20, lambda: d.log_text())
        found = cli_json(data, "similar", photos / "reds" / "red_009.jpg", "-k", "20")
        assert len(found) == 3 and all(Path(m["path"]).exists() for m in found)
        # clusters are refreshed when the queue drains (a consolidation may renumber them)
        wait_for(lambda: sum(c["size"] for c in cli_json(data, "clusters")) == 4, 10)
        members = [
            m["path"]
            for c in cli_json(data, "clusters")
            for m in cli_json(data, "clusters", "show", str(c["id"]))["members"]
        ]
        assert len(members) == 4 and all(Path(p).exists() for p in members)
    faiss_matches_sqlite(data)


def test_kill_9_during_ingestion_then_restart_indexes_everything_once(lib):
    photos, data = lib
    rng = np.random.default_rng(3)
    total, partial = 4, []
    for round_ in range(3):
        d = DaemonProcess(data, "--batch-size", "4", "--workers", "1")
        d.wait_ready()
        wait_for(lambda total=total: row_count(data) >= total, 30)  # the start-up scan caught up
        make_photos(photos / f"batch{round_}", ("red", "blue", "green")[round_], 40)
        target = total + int(rng.integers(1, 36))  # a random moment of this round's ingestion
        wait_for(lambda t=target, d=d: row_count(data) >= t or d.proc.poll() is not None, 30)
        d.kill()
        partial.append(row_count(data) - total)
        total += 40
    assert any(0 < n < 40 for n in partial), partial  # the kills landed mid-ingestion
    with DaemonProcess(data):
        wait_for(lambda: settled(data, total), 60)
    s = status(data)
    assert s["indexed"] == s["index_size"] == total
    faiss_matches_sqlite(data)
    paths = [r[0] for r in query(data, "SELECT path FROM images")]
    assert len(paths) == len(set(paths)) == total
    assert all(Path(p).exists() for p in paths)


def test_a_scan_stopped_by_sigterm_logs_interrupted_not_done(lib):
    photos, data = lib
    make_photos(photos / "many", "red", 300)
    d = DaemonProcess(data, "--batch-size", "2", "--workers", "1")
    d.wait_ready()
    wait_for(lambda: row_count(data) > 4, 60, d.log_text)  # the start-up scan is embedding
    assert d.stop(timeout=30) == 0  # SIGTERM
    text = d.log_text()
    assert row_count(data) < 304, "the scan ended before the signal: nothing was interrupted"
    assert "scan interrupted: " in text and "scan done" not in text, text


def test_changes_while_stopped_are_caught_at_start(lib):
    photos, data = lib
    with DaemonProcess(data):
        wait_for(lambda: settled(data, 4), 30)
    make_photos(photos / "new", "red", 5)
    (photos / "seed" / "green_001.jpg").unlink()
    with DaemonProcess(data):
        wait_for(lambda: settled(data, 8), 30)


def test_periodic_rescan_catches_what_the_watcher_did_not_report(lib):
    photos, data = lib
    # polling once an hour: no events arrive during the test, only the rescan can see files
    with DaemonProcess(data, "--poll", "3600", "--rescan-interval", "2") as d:
        wait_for(lambda: settled(data, 4), 30)
        make_photos(photos / "quiet", "blue", 3)
        wait_for(lambda: settled(data, 7), 15, lambda: d.log_text())
        assert status(data)["daemon"]["roots"][str(photos.resolve())].startswith("polling")


def test_a_second_daemon_is_refused_and_cli_works_alongside(lib):
    _photos, data = lib
    with DaemonProcess(data):
        wait_for(lambda: settled(data, 4), 30)
        second = run_process("--data-dir", data, "daemon", timeout=60)
        assert second.returncode == 1
        assert second.stderr.startswith("error: library") and "imgindex daemon" in second.stderr
        s = status(data)
        assert s["daemon"]["running"] and s["daemon"]["state"] == "watching"
        assert cli_json(data, "clusters")
    assert status(data)["daemon"]["running"] is False


def test_a_vanished_root_is_frozen_not_emptied(lib, tmp_path):
    photos, data = lib
    make_photos(photos / "more", "red", 6)
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 10), 30)
        photos.rename(tmp_path / "unplugged")
        photos.mkdir()  # an empty mount point, as after an unmount
        d.wait_rounds(3)  # the roots re-checked, and the events of the move...
        wait_for(lambda: status(data)["queued"] == 0, 20, d.log_text)  # ...taken in
        assert status(data)["indexed"] == 10
        photos.rmdir()
        (tmp_path / "unplugged").rename(photos)
        make_photos(photos / "after", "blue", 2)
        wait_for(lambda: settled(data, 12), 20, lambda: d.log_text())
        assert status(data)["embedded_total"] == 12


def test_new_root_and_ignore_list_apply_while_running(lib, tmp_path):
    photos, data = lib
    other = tmp_path / "other"
    other.mkdir()
    with DaemonProcess(data) as d:
        wait_for(lambda: settled(data, 4), 30)
        cli(data, "config", "ignore", "*.skip.jpg,raw")
        cli(data, "init", other)
        # the daemon notices config_version within a housekeeping round, reloads, watches
        wait_for(lambda: str(other.resolve()) in status(data)["daemon"]["roots"], 10, d.log_text)
        make_photos(other, "red", 2)
        draw("blue", 9).save(photos / "x.skip.jpg")
        (photos / "raw").mkdir()
        make_photos(photos / "raw", "blue", 2)
        make_photos(photos / ".hidden", "blue", 2)
        (photos / "partial.jpg.part").write_bytes(b"...")
        wait_for(lambda: settled(data, 6), 20, lambda: d.log_text())
        d.wait_rounds(2)
        assert settled(data, 6)  # the ignored files stay out
        reloads = d.reloads()
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.reloads() > reloads, 10, d.log_text)
        assert d.proc.poll() is None


def test_inotify_overflow_warning_triggers_a_rescan():
    import logging

    from imgindex.watch import EventSink, Watcher

    watcher = Watcher(EventSink())
    try:
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert watcher.missed_events
    finally:
        watcher.stop()


def test_network_mounts_are_polled():
    from imgindex.watch import mount_type, needs_polling

    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/nas rw - nfs4 nas:/photos rw\n"
        "41 22 0:51 / /mnt/my\\040share rw - cifs //nas/share rw\n"
        "42 22 0:52 / /mnt/gdrive rw - fuse.rclone gdrive: rw\n"
    )
    assert mount_type(Path("/mnt/nas/2024"), mountinfo) == "nfs4"
    assert mount_type(Path("/mnt/my share/a"), mountinfo) == "cifs"
    assert mount_type(Path("/home/me"), mountinfo) == "ext4"
    assert [needs_polling(t) for t in ("nfs4", "cifs", "fuse.rclone", "ext4", "btrfs")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert mount_type(Path("/")) != ""  # the real table (or "unknown" without /proc)


def test_too_few_inotify_watches_falls_back_to_polling_and_says_how_to_fix(
    tmp_path, monkeypatch, caplog
):
    import logging

    from imgindex import watch

    limit = tmp_path / "max_user_watches"
    limit.write_text("4\n")
    monkeypatch.setattr(watch, "WATCH_LIMIT_FILE", limit)
    root = tmp_path / "tree"
    for i in range(6):
        (root / f"album{i}").mkdir(parents=True)
    watcher = watch.Watcher(watch.EventSink())
    try:
        with caplog.at_level(logging.WARNING, logger="imgindex.watch"):
            watcher.sync([root], {root: True})
        assert watcher.modes[root].startswith("polling")
        assert "sudo sysctl fs.inotify.max_user_watches=16" in caplog.text
    finally:
        watcher.stop()


def test_a_folder_moved_in_from_outside_is_indexed_without_waiting_for_a_close(lib, tmp_path):
    """Files moved in get no close event; they must not wait for the writer timeout."""
    photos, data = lib
    outside = tmp_path / "camera-import"
    make_photos(outside, "red", 5)  # written just now: fresh mtimes
    with DaemonProcess(data, "--rescan-interval", "3600") as d:
        wait_for(lambda: settled(data, 4), 30)
        shutil.move(outside, photos / "import")
        started = time.monotonic()
        wait_for(lambda: settled(data, 9), 10, lambda: d.log_text())
        assert time.monotonic() - started < 10  # the writer timeout is 30 s
