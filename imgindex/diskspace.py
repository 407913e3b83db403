"""Which file system a path lives on and how much room it has, for errors that name the disk
and the space a file needed."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from imgindex.errors import DiskFull

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_ESCAPE = re.compile(r"\\([0-7]{3})")


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
    table = read_proc("mounts")
    if table is None:
        return None
    found = None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 1 and unescape(fields[1]) == str(mount):
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


def read_proc(name: str) -> str | None:
    """``/proc/self/NAME`` (``mounts``, ``mountinfo``) as text, None when unreadable. Names that
    are not UTF-8 are decoded as ``os.fsdecode`` decodes them, so they compare equal to paths."""
    try:
        return os.fsdecode(Path("/proc/self", name).read_bytes())
    except OSError:
        return None


def unescape(field: str) -> str:
    """A path in ``/proc/self/mounts`` or ``mountinfo``: space, tab, newline and backslash are
    written as octal escapes (``\\040``)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)
