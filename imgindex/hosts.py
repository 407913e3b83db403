"""Which host this process is: several hosts (each with its own data directory, its own daemon
and its own roots) may share one library database, and the same path may exist on two of them
(two NAS units with ``/srv/photos`` each). Rows of paths carry their host (revision 0008).

``this_host()``: ``IMGINDEX_HOST`` when set (tests and containers can be several hosts on one
machine), else the machine's hostname.

``row_host(backend)``: the name a library's rows are stored under. A SQLite file lives on one
machine's disk: unless ``IMGINDEX_HOST`` names a host, its rows belong to ``LOCAL`` (``""``),
"this machine, whichever it is", so a library moved to another machine, or opened in a
container whose hostname changes at every start, still owns its files (rows from before
revision 0008 are ``LOCAL`` too). A server's database is shared: its rows are named by host.
"""

from __future__ import annotations

import os
import socket

from imgindex.errors import ImgIndexError

ENV = "IMGINDEX_HOST"
LOCAL = ""  # the host of a library that only one machine uses (a SQLite file)
MAX_LENGTH = 255


def this_host() -> str:
    """``IMGINDEX_HOST`` when set (checked: not empty, printable, at most 255 characters),
    else the machine's hostname."""
    name = os.environ.get(ENV)
    if name is None:
        return socket.gethostname()
    if not name or not name.isprintable() or len(name) > MAX_LENGTH:
        raise ImgIndexError(
            f"{ENV}={name!r} is not a host name: expected 1 to {MAX_LENGTH} printable characters"
        )
    return name


def row_host(backend: str) -> str:
    """The host a library's rows are stored under on a database of ``backend`` ("sqlite",
    "postgresql"): ``this_host()``, but ``LOCAL`` for SQLite unless ``IMGINDEX_HOST`` is set."""
    if backend == "sqlite" and ENV not in os.environ:
        return LOCAL
    return this_host()
