"""File safety, each written once: atomic replacement of a file, ``flock`` locks, and whether a
path lies under a folder (a root).

* ``atomic_write`` (or ``write_temp`` then ``atomic_replace``, when something must happen in
  between): the content goes to a temporary file beside the target, is fsynced, renamed over the
  target, and the folder is fsynced; a reader sees the old file or the new one, never a part. On
  any failure the temporary file is removed and the error re-raised unchanged.
* ``Flock``: an exclusive lock taken without waiting (its holder writes a note saying who it is,
  which ``holder`` reads with a shared probe) or waiting.
* ``is_under``, ``overlaps``, ``root_of``: on whole path components (``/photos2`` is not under
  ``/photos``), lexically (no file-system access: resolve first where links matter);
  ``root_available``: whether a root may be trusted to show what it holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar, overload

T = TypeVar("T")
StrPath = str | os.PathLike[str]
P = TypeVar("P", bound=StrPath)

NAME_MAX = 255  # bytes in one file name
TEMP_SUFFIX = ".tmp"
#: ``fsync`` of a folder: file systems that cannot (some FUSE and network ones) say so thus.
SYNC_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP)
#: ``flock``: file systems without locks (some network ones) say so thus.
LOCK_UNSUPPORTED = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
UNKNOWN_HOLDER = "another process"
NOTE_MAX = 200  # bytes of a holder's note that are read


# --- atomic replacement -----------------------------------------------------------------------


def atomic_write(
    path: StrPath, fill: Callable[[IO[Any]], T], *, text: bool = False, mode: int = 0o666
) -> T:
    """Replace ``path`` by what ``fill`` writes to the file object it is given (text: UTF-8,
    undecodable names kept by ``surrogateescape``, newlines as written); what ``fill``
    returns. The file gets ``mode`` less the umask, as ``open`` would give it."""
    tmp, result = write_temp(path, fill, text=text, mode=mode)
    atomic_replace(tmp, path)
    return result


def write_temp(
    path: StrPath, fill: Callable[[IO[Any]], T], *, text: bool = False, mode: int = 0o666
) -> tuple[Path, T]:
    """The first half of ``atomic_write``: ``(temporary file beside path, what fill returned)``,
    written and fsynced. Nothing is left behind when it fails."""
    target = Path(path)
    fd, tmp = _create_temp(target, mode)
    try:
        kwargs: dict[str, Any] = (
            {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""} if text else {}
        )
        with os.fdopen(fd, "w" if text else "wb", **kwargs) as fh:
            result = fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, result


def atomic_replace(tmp: StrPath, path: StrPath) -> None:
    """The second half: rename ``tmp`` over ``path`` and fsync the folder, so the new name
    survives a crash. ``tmp`` is removed when the rename fails."""
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(Path(path).parent)


def sync_folder(folder: StrPath) -> None:
    """fsync a folder (its entries: a rename or a new file in it becomes durable)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def is_temp_for(name: str, target: str) -> bool:
    """Whether the file name ``name`` is one of ``write_temp``'s for a file named ``target``."""
    return name.startswith(f".{_temp_stem(target)}.") and name.endswith(TEMP_SUFFIX)


def _create_temp(target: Path, mode: int) -> tuple[int, Path]:
    """A new, empty file ``.<name>.<random>.tmp`` beside ``target``: ``(fd, path)``."""
    stem = _temp_stem(target.name)
    while True:
        tmp = target.with_name(f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(tmp, flags, mode), tmp  # the kernel applies the umask
        except FileExistsError:
            continue


def _temp_stem(name: str) -> str:
    """``name``, shortened so that a temporary name made of it fits in ``NAME_MAX`` bytes."""
    room = NAME_MAX - len(f"..{'0' * 8}{TEMP_SUFFIX}")
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return name


# --- locks ------------------------------------------------------------------------------------


class Flock:
    """An ``flock`` on a file (created when missing) or on a ``folder`` itself; released by
    ``release``, by leaving a ``with`` block, or when the process ends. ``optional``: where
    the file system has no locks, go on without one."""

    def __init__(self, path: StrPath, *, folder: bool = False, optional: bool = False) -> None:
        self.path = Path(path)
        self.folder = folder
        self.optional = optional
        self._fd: int | None = None

    def try_exclusive(self, note: str | None = None) -> str | None:
        """Take the lock exclusively without waiting: None once held (``note`` is then what
        ``holder`` tells others), else what the holder's note says."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _note(fd)
            os.close(fd)
            return found
        except OSError as exc:
            if not (self.optional and exc.errno in LOCK_UNSUPPORTED):
                os.close(fd)
                raise
        if note is not None and not self.folder:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{note}\n".encode(errors="surrogateescape"), 0)
        self._fd = fd
        return None

    def exclusive(self) -> None:
        """Take the lock exclusively, waiting for its holder to release it."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if not (self.optional and exc.errno in LOCK_UNSUPPORTED):
                os.close(fd)
                raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Flock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def _open(self) -> int:
        if self.folder:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)


def holder(path: StrPath) -> str | None:
    """Who holds an exclusive lock on the file ``path`` (its note, else ``UNKNOWN_HOLDER``),
    or None when nobody does. Needs only read access (a shared lock, dropped at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _note(fd)
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


def _note(fd: int) -> str:
    try:
        text = os.pread(fd, NOTE_MAX, 0).decode(errors="replace").strip()
    except OSError:  # a folder
        text = ""
    return text or UNKNOWN_HOLDER


# --- paths under roots ------------------------------------------------------------------------


def is_under(path: StrPath, folder: StrPath) -> bool:
    """Whether ``path`` is ``folder`` or inside it, comparing whole components of the
    normalised paths (trailing and doubled slashes, ``.`` and ``..`` do not count)."""
    return _within(_norm(path), _norm(folder))


def overlaps(a: StrPath, b: StrPath) -> bool:
    """Whether one of two folders is, or holds, the other."""
    na, nb = _norm(a), _norm(b)
    return _within(na, nb) or _within(nb, na)


@overload
def root_of(path: StrPath, roots: Iterable[P]) -> P | None: ...
@overload
def root_of(path: StrPath, roots: Iterable[T], key: Callable[[T], StrPath]) -> T | None: ...
def root_of(
    path: StrPath, roots: Iterable[Any], key: Callable[[Any], StrPath] | None = None
) -> Any:
    """The innermost of ``roots`` holding ``path`` (``key``: a root's path, where ``roots``
    holds something else, such as ``(id, path)`` pairs), or None."""
    p = _norm(path)
    best, depth = None, -1
    for root in roots:
        r = _norm(key(root) if key is not None else root)
        if len(r) > depth and _within(p, r):
            best, depth = root, len(r)
    return best


def root_available(root: StrPath) -> bool:
    """Whether a root can be trusted to show what it holds: a root that is missing, cannot
    be read or is suddenly empty (an unmounted disk) is frozen, never emptied."""
    try:
        with os.scandir(root) as it:
            return next(it, None) is not None
    except OSError:
        return False


def _norm(path: StrPath | bytes) -> str:
    p = os.path.normpath(os.fsdecode(path))
    return "/" + p.lstrip("/") if p.startswith("//") else p  # POSIX keeps a leading "//"


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
