"""Which file system a path lives on and how much room it has, for errors that name the disk
and the space a file needed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from imgindex.errors import DiskFull

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system (or a quota) had no room."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path``."""
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def device_of(mount: Path) -> str | None:
    """What is mounted at ``mount`` (``/dev/sda2``, ``tmpfs``), from ``/proc/self/mounts``."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and _unescape(fields[1]) == str(mount):
            found = fields[0]  # the last one mounted there is the one in use
    return found


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def no_room(folder: Path, needed: int, what: str, exc: OSError) -> DiskFull:
    """The error for ``what`` (a file in ``folder``) not fitting: names the file system, its
    device, the bytes needed and the bytes free."""
    mount = mount_point(folder)
    device = device_of(mount)
    where = f"{mount} ({device})" if device else str(mount)
    free = free_bytes(folder)
    why = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left"
    return DiskFull(
        f"cannot save {what}: {why} on {where}: it needs {human_bytes(needed)}, "
        f"{human_bytes(free)} is free",
        mount=where,
        needed=needed,
        free=free,
    )


def human_bytes(n: int) -> str:
    """``1.5 MB``-style sizes (powers of 1000)."""
    if n < 1000:
        return f"{n} bytes"
    size = n / 1000
    for unit in ("kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _unescape(field: str) -> str:
    """``/proc/self/mounts`` writes spaces and friends as octal escapes (``\\040``)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
