"""The daemon's settings, stored in the library's ``meta`` table as ``daemon.<name>``.

``imgindex config NAME VALUE`` changes one; a running daemon picks the change up at once
(it watches ``config_version``) or on SIGHUP. Command-line flags override for one run.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sqlalchemy import Connection

from imgindex import store
from imgindex.errors import ImgIndexError


@dataclass(frozen=True)
class DaemonSettings:
    """Timings in seconds."""

    debounce: float = 1.0  # quiet period after a file is closed or renamed into place
    write_timeout: float = 30.0  # quiet period when no close was seen (a writer that vanished)
    batch_size: int = 32  # images per batch...
    batch_seconds: float = 0.5  # ...or this long after the first one is due, whichever first
    rescan_interval: float = 3600.0  # full reconciliation, with +-10 % jitter
    poll: float = 0.0  # > 0: poll every root every this many seconds instead of inotify
    ignore: tuple[str, ...] = field(default_factory=tuple)  # extra glob patterns (names)
    view_dir: str = ""  # absolute path: a folder per cluster kept current there ("": off)
    view_mode: str = "symlink"  # symlink | copy

    def ignores(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.ignore)


NAMES = tuple(f.name for f in fields(DaemonSettings))


def parse(name: str, raw: str) -> Any:
    """The typed value of setting ``name``; raises ImgIndexError naming what is wrong."""
    if name not in NAMES:
        raise ImgIndexError(f"unknown setting '{name}'; settings: {', '.join(NAMES)}")
    if name == "ignore":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if name == "view_dir":
        if raw.strip() and not raw.startswith("/"):
            raise ImgIndexError(f"view_dir {raw!r}: expected an absolute path, or '' for none")
        return raw if raw.strip() else ""
    if name == "view_mode":
        if raw not in ("symlink", "copy"):
            raise ImgIndexError(f"view_mode {raw!r}: expected symlink or copy")
        return raw
    kind = int if name == "batch_size" else float
    try:
        value = kind(raw)
    except ValueError:
        raise ImgIndexError(f"{name} {raw!r}: expected a {kind.__name__}") from None
    if value < 0 or (value == 0 and name not in ("poll",)):
        raise ImgIndexError(f"{name} {raw!r}: expected a positive number")
    return value


def load(conn: Connection, **overrides: Any) -> DaemonSettings:
    """Stored settings with ``overrides`` (those not None) on top."""
    stored = {
        n[len("daemon.") :]: v for n, v in store.all_meta(conn).items() if n.startswith("daemon.")
    }
    values = {n: parse(n, v) for n, v in stored.items() if n in NAMES}
    values.update({n: v for n, v in overrides.items() if v is not None})
    return replace(DaemonSettings(), **values)


def save(conn: Connection, name: str, raw: str) -> Any:
    value = parse(name, raw)
    store.set_meta(conn, f"daemon.{name}", raw)
    store.add_to_counter(conn, "config_version", 1)
    return value


def as_dict(settings: DaemonSettings) -> dict[str, Any]:
    return {
        n: (list(v) if isinstance(v, tuple) else v)
        for n, v in ((f, getattr(settings, f)) for f in NAMES)
    }
