"""``imgindex.fsafe`` on real files: atomic replacement, ``flock`` locks across processes, and
whether a path lies under a root (plus the mount tables' paths that the mount test reads)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import small_tmpfs
from unprivileged import obey_file_modes, require_file_modes

from imgindex import diskspace, fsafe
from imgindex.watch import mount_type

LATIN1 = os.fsdecode(b"caf\xe9")  # a name that is not UTF-8, as os.fsdecode gives it


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(fsafe.TEMP_SUFFIX))


def child(code: str, **kwargs) -> subprocess.Popen:
    """A Python process running ``code`` with ``fsafe`` imported, talking over pipes."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import os, sys\nfrom imgindex import fsafe\n{code}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def poll(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs (root only); unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        yield disk


# --- atomic replacement -----------------------------------------------------------------------


def test_atomic_write_replaces_the_file_with_umask_mode_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    old = os.umask(0o027)
    try:
        assert fsafe.atomic_write(target, lambda fh: fh.write(b"new content")) == 11
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new content"
    assert target.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, as open() gives
    assert leftovers(tmp_path) == []


def test_text_mode_keeps_undecodable_names_and_newlines_as_written(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    fsafe.atomic_write(target, lambda fh: fh.write(f"{LATIN1}\r\nb\n"), text=True)
    assert target.read_bytes() == b"caf\xe9\r\nb\n"


def test_a_long_name_gets_a_temporary_name_that_fits(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 127)  # 254 bytes: the longest name a file may have, nearly
    fsafe.atomic_write(target, lambda fh: fh.write(b"x"))
    assert target.read_bytes() == b"x" and leftovers(tmp_path) == []


def test_a_failing_fill_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fill(fh) -> None:
        fh.write(b"half of it")
        raise ValueError("the writer failed")

    with pytest.raises(ValueError, match="the writer failed"):
        fsafe.atomic_write(target, fill)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_failing_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a folder with something in it: cannot be replaced
    with pytest.raises(OSError) as caught:
        fsafe.atomic_write(target, lambda fh: fh.write(b"x"))
    assert caught.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert leftovers(tmp_path) == [] and (target / "inside").is_dir()


def test_a_full_disk_leaves_the_old_file_and_no_temp(small_disk: Path) -> None:
    target = small_disk / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        fsafe.atomic_write(target, lambda fh: fh.write(b"x" * (1 << 20)))
    assert diskspace.is_full(caught.value)  # re-raised as it came: callers name the disk
    assert target.read_bytes() == b"old" and leftovers(small_disk) == []


def test_a_file_size_limit_mid_write_leaves_no_temp(tmp_path: Path) -> None:
    """A real write failure that needs no privilege: RLIMIT_FSIZE makes write() fail (EFBIG)."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    proc = child(
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    fsafe.atomic_write({str(target)!r}, lambda fh: fh.write(b'x' * 100_000))\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    out, err = proc.communicate(timeout=60)
    assert out.strip() == str(errno.EFBIG), err
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_folder_that_cannot_be_written_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    require_file_modes(tmp_path)
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = child(
            "try:\n"
            f"    fsafe.atomic_write({str(folder / 'out.bin')!r}, lambda fh: fh.write(b'x'))\n"
            "except PermissionError as exc:\n"
            "    print('refused', exc.errno)\n",
            preexec_fn=obey_file_modes,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        folder.chmod(0o755)
    assert out.strip() == f"refused {errno.EACCES}", err
    assert list(folder.iterdir()) == []


def test_temporary_names_are_recognised(tmp_path: Path) -> None:
    target = tmp_path / ".imgindex-view.json"
    tmp, _ = fsafe.write_temp(target, lambda fh: fh.write(b"{}"))
    assert fsafe.is_temp_for(tmp.name, target.name)
    assert not fsafe.is_temp_for(".other.json.1234.tmp", target.name)
    fsafe.atomic_replace(tmp, target)
    assert target.read_bytes() == b"{}" and not tmp.exists()


# --- locks ------------------------------------------------------------------------------------

HOLD = (
    "lock = fsafe.Flock(sys.argv[1])\n"
    "print(lock.try_exclusive(f'pid {os.getpid()} (test)'), flush=True)\n"
    "sys.stdin.readline()\n"
)


def test_the_lock_refuses_a_second_holder_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "write.lock"
    assert fsafe.holder(path) is None  # no file yet
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import os, sys\nfrom imgindex import fsafe\n{HOLD}", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "None"  # it holds the lock now
        note = f"pid {proc.pid} (test)"
        assert fsafe.holder(path) == note
        mine = fsafe.Flock(path)
        assert mine.try_exclusive("pid 0 (second)") == note
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
        assert fsafe.holder(path) is None
        assert mine.try_exclusive("pid 0 (second)") is None
        assert fsafe.holder(path) == "pid 0 (second)"
        mine.release()
    finally:
        proc.kill()
        proc.wait()


def test_the_exclusive_lock_waits_for_its_holder(tmp_path: Path) -> None:
    """The migration lock: a second process blocks in flock until the first releases."""
    path, said = tmp_path / "migrate.lock", tmp_path / "said"
    with fsafe.Flock(path) as mine:
        mine.exclusive()
        proc = child(
            f"with fsafe.Flock({str(path)!r}) as lock:\n"
            "    lock.exclusive()\n"
            f"    print(open({str(said)!r}).read())\n"
        )
        try:
            poll(lambda: _waits_for_lock(proc.pid) or proc.poll() is not None)
            assert proc.poll() is None, proc.communicate()
            said.write_text("released")  # it can only read this once we let go
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "released", err


def _waits_for_lock(pid: int) -> bool:
    """Whether ``pid`` is blocked on a lock (``/proc/locks`` lists waiters with ``->``)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and f" {pid} " in line for line in lines)


def test_a_folder_lock_is_one_updater_at_a_time(tmp_path: Path) -> None:
    with fsafe.Flock(tmp_path, folder=True) as first:
        assert first.try_exclusive() is None
        assert fsafe.Flock(tmp_path, folder=True).try_exclusive() == fsafe.UNKNOWN_HOLDER
    with fsafe.Flock(tmp_path, folder=True) as again:
        assert again.try_exclusive() is None


# --- paths under roots ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "folder", "inside"),
    [
        ("/photos/a.jpg", "/photos", True),
        ("/photos", "/photos", True),
        ("/photos2/a.jpg", "/photos", False),  # a longer name, not a folder inside
        ("/photos2", "/photos", False),
        ("/photo", "/photos", False),
        ("/photos/", "/photos", True),  # trailing slashes do not count
        ("/photos/a.jpg", "/photos/", True),
        ("/photos//a.jpg", "/photos", True),
        ("//photos/a.jpg", "/photos", True),
        ("/photos/./a.jpg", "/photos", True),
        ("/photos/../etc/passwd", "/photos", False),
        ("/photos", "/photos/a", False),
        ("/anything", "/", True),
        (f"/{LATIN1}/a.jpg", f"/{LATIN1}", True),
        (f"/{LATIN1}2/a.jpg", f"/{LATIN1}", False),
        (b"/caf\xe9/a.jpg", f"/{LATIN1}", True),  # bytes and fsdecoded str agree
        (Path("/photos/a"), Path("/photos"), True),
    ],
)
def test_is_under_compares_whole_components(path, folder, inside: bool) -> None:
    assert fsafe.is_under(path, folder) is inside


def test_root_of_is_the_innermost_root_holding_a_path() -> None:
    roots = [Path("/photos"), Path("/photos/family"), Path("/photos2"), Path(f"/{LATIN1}")]
    assert fsafe.root_of("/photos/family/x.jpg", roots) == Path("/photos/family")
    assert fsafe.root_of("/photos/familyx/x.jpg", roots) == Path("/photos")
    assert fsafe.root_of("/photos2/x.jpg", roots) == Path("/photos2")
    assert fsafe.root_of("/photos/family/", roots) == Path("/photos/family")
    assert fsafe.root_of(f"/{LATIN1}/x.jpg", roots) == Path(f"/{LATIN1}")
    assert fsafe.root_of("/elsewhere/x.jpg", roots) is None
    pairs = list(enumerate(roots, start=1))
    assert fsafe.root_of("/photos2/x", pairs, key=lambda pair: pair[1]) == (3, Path("/photos2"))


def test_overlaps_either_way_on_components() -> None:
    assert fsafe.overlaps("/photos", "/photos/family")
    assert fsafe.overlaps("/photos/family", "/photos/")
    assert not fsafe.overlaps("/photos", "/photos2")


def test_root_available_only_when_it_shows_something(tmp_path: Path) -> None:
    empty, full, afile = tmp_path / "empty", tmp_path / "full", tmp_path / "file"
    empty.mkdir()
    (full / LATIN1).mkdir(parents=True)
    afile.write_bytes(b"x")
    assert fsafe.root_available(full)
    assert not fsafe.root_available(empty)  # an unmounted disk's mount point looks like this
    assert not fsafe.root_available(tmp_path / "missing")
    assert not fsafe.root_available(afile)


# --- the mount test ---------------------------------------------------------------------------


def test_mount_points_with_odd_names_are_found(tmp_path: Path) -> None:
    """A mount point named in Latin-1, with a space and a backslash: the mount tables write
    the bytes as they are and escape the rest; both the watcher's and the full-disk error's
    lookups find it (before, the first such mount anywhere broke both)."""
    point = tmp_path / f"{LATIN1} a\\b"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", point], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        assert mount_type(point / "photos") == "tmpfs"
        assert diskspace.device_of(point) == "tmpfs"
    finally:
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "-l", point], check=True)


def test_mount_points_with_escaped_characters_are_matched() -> None:
    """The kernel writes space, tab, newline and backslash in mount points as octal escapes."""
    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/a\\134b rw - nfs4 nas:/photos rw\n"
        "41 22 0:51 / /mnt/Fotos\\040\\011Über rw - cifs //nas/share rw\n"
    )
    assert mount_type(Path("/mnt/a\\b/2024"), mountinfo) == "nfs4"
    assert mount_type(Path("/mnt/Fotos \tÜber/x"), mountinfo) == "cifs"
    assert diskspace.unescape("/mnt/Fotos\\040Über") == "/mnt/Fotos Über"
