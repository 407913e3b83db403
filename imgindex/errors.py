"""One exception hierarchy: everything a user can cause derives from ImgIndexError.

The CLI catches ImgIndexError at a single boundary, prints ``error: <message>`` on stderr and
exits 1. Anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class ImgIndexError(Exception):
    """Base class of every error a user can cause or fix."""


class LibraryNotFound(ImgIndexError):
    """No library exists in the data directory."""


class LibraryLocked(ImgIndexError):
    """Another process holds the library's write lock."""


class SchemaTooNew(ImgIndexError):
    """The database was written by a newer imgindex."""


class DatabaseUnavailable(ImgIndexError):
    """The library's database server cannot be reached: it is down, restarting, or the network
    to it is cut. Not a fault of any file: a pass that meets it stops, and the daemon waits for
    the server to come back.

    ``server``: which one (never a password); ``reason``: what the connection said."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"the library's database server cannot be reached ({server}): {reason}")
        self.server = server
        self.reason = reason


class ModelMismatch(ImgIndexError):
    """The library was built with another embedding model."""


class UnknownModel(ImgIndexError):
    """No embedding model of that name."""


class WeightsUnavailable(ImgIndexError):
    """Model weights could not be found or downloaded."""


class NotInLibrary(ImgIndexError):
    """A path or cluster the user named is not in the library."""


class DatabaseNotEmpty(ImgIndexError):
    """A library is copied only into a database that holds none (``imgindex migrate --to``)."""


class CopyMismatch(ImgIndexError):
    """A copied library differs from its source (row counts or checksums)."""


class DecodeFailure(ImgIndexError):
    """A file could not be decoded into an image.

    ``retryable`` is true when the failure may be transient (a truncated file that is still
    being written); such files are retried later instead of being recorded as failed.
    """

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class DiskFull(ImgIndexError):
    """A file system had no room (ENOSPC, EDQUOT) for a file imgindex writes.

    ``mount``: the file system's mount point (and device); ``needed``/``free``: bytes."""

    def __init__(self, message: str, *, mount: str, needed: int, free: int) -> None:
        super().__init__(message)
        self.mount = mount
        self.needed = needed
        self.free = free


class RayUnavailable(ImgIndexError):
    """``index --ray`` cannot run: Ray is not installed, or its cluster cannot be reached."""


class RayStalled(ImgIndexError):
    """A Ray pass got nothing back from its cluster for too long (it lost the nodes to go on)."""


class RootNotShared(ImgIndexError):
    """A Ray node cannot read a root at the path this host reads it (no shared mount there)."""
