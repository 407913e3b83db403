"""Where a library lives: ``--data-dir``, else ``IMGINDEX_DATA_DIR``, else systemd's
``$STATE_DIRECTORY``, else ``$XDG_DATA_HOME/imgindex`` (``~/.local/share/imgindex``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "imgindex.db"
LEGACY_INDEX_NAME = "vectors.faiss"  # the FAISS file before revision 0004
LOCK_NAME = "write.lock"
WEIGHTS_DIR = "weights"
SOCKET_NAME = "daemon.sock"
DATABASE_URL_NAME = "database.url"  # a PostgreSQL library's URL (no password)


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory chosen by flag, environment or default, as an absolute path."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    if env := os.environ.get("IMGINDEX_DATA_DIR"):
        return Path(env).expanduser().absolute()
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0]).absolute()  # systemd may list several
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "imgindex"


@dataclass(frozen=True)
class LibraryPaths:
    """The files of one library inside its data directory."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def database_url(self) -> Path:
        """The URL of the library's PostgreSQL database, when it has one (``init --database``)."""
        return self.root / DATABASE_URL_NAME

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_DIR

    @property
    def socket(self) -> Path:
        """Where a running daemon answers queries (see ``imgindex.service``)."""
        return self.root / SOCKET_NAME
