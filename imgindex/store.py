"""The library's write lock: one writer per library, and who holds it."""

from __future__ import annotations

import os
from pathlib import Path

from imgindex import fsafe
from imgindex.errors import LibraryLocked


class WriteLock(fsafe.Flock):
    """An exclusive ``flock`` on the library's lock file: one writer per library."""

    def __init__(self, path: Path, purpose: str) -> None:
        super().__init__(path)
        self.purpose = purpose

    def acquire(self) -> None:
        holder = self.try_exclusive(f"pid {os.getpid()} ({self.purpose})")
        if holder is not None:
            raise LibraryLocked(
                f"library {self.path.parent} is being written by {holder}; wait for it to "
                "finish or stop it (or use --data-dir for another library)"
            )


#: Who holds the write lock (``"pid N (purpose)"``), or None when nobody does.
lock_holder = fsafe.holder
