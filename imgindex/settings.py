"""The daemon's settings, stored in the library's ``meta`` table as ``daemon.<name>``.

``imgindex config NAME VALUE`` changes one; a running daemon picks the change up at once
(it watches ``config_version``) or on SIGHUP. Command-line flags override for one run.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imgindex.db import Engine, meta
from imgindex.db.roots import root_paths
from imgindex.errors import ImgIndexError

log = logging.getLogger(__name__)


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
    embed_url: str = ""  # http://HOST:PORT of an `imgindex embed-server` ("": the local model)
    embed_token_file: str = ""  # absolute path of the service's token ("": $IMGINDEX_EMBED_TOKEN)
    embed_fallback: str = "local"  # local | wait: while the service is unreachable
    keep: str = "largest"  # which duplicate is kept: largest | oldest | most-metadata
    quarantine: str = ""  # absolute path: where set-aside duplicates go ("": say --quarantine)
    http: str = ""  # HOST:PORT the daemon serves the web page on ("": none)

    def ignores(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.ignore)


NAMES = tuple(f.name for f in fields(DaemonSettings))
DEFAULTS = DaemonSettings()

#: ``name: (type, lowest, highest)`` of the numeric settings, in seconds or images.
RANGES: dict[str, tuple[type, float, float]] = {
    "debounce": (float, 0.05, 3600.0),
    "write_timeout": (float, 1.0, 86400.0),
    "batch_size": (int, 1, 4096),
    "batch_seconds": (float, 0.01, 3600.0),
    "rescan_interval": (float, 1.0, 30 * 86400.0),
    "poll": (float, 0.1, 86400.0),  # or 0: inotify where it works
}
VIEW_MODES = ("symlink", "copy")
EMBED_FALLBACKS = ("local", "wait")


def parse(name: str, raw: str, roots: Sequence[Path] = ()) -> Any:
    """The typed value of setting ``name``; raises ImgIndexError naming what is wrong.
    ``roots``: the library's roots, which ``view_dir`` must stay out of."""
    if name not in NAMES:
        raise ImgIndexError(f"unknown setting '{name}'; settings: {', '.join(NAMES)}")
    if name == "ignore":
        return check(name, tuple(p.strip() for p in raw.split(",") if p.strip()))
    if name in RANGES:
        try:
            return _number(name, RANGES[name][0](raw))
        except (ValueError, ImgIndexError):
            raise ImgIndexError(f"{name} {raw!r}: expected {_expected(name)}") from None
    return check(name, raw, roots)


def check(name: str, value: Any, roots: Sequence[Path] = ()) -> Any:
    """``value`` when it is a valid typed value of setting ``name``, else ImgIndexError."""
    if name in RANGES:
        try:
            return _number(name, value)
        except ImgIndexError:
            raise ImgIndexError(f"{name} {value!r}: expected {_expected(name)}") from None
    if name == "ignore":
        for pattern in value:
            _check_pattern(pattern)
        return tuple(value)
    if name == "view_dir":
        return _check_view_dir(value, roots)
    if name == "embed_url":
        return _check_embed_url(value)
    if name == "embed_token_file":
        if value and not value.startswith("/"):
            raise ImgIndexError(f"embed_token_file {value!r}: expected an absolute path, or ''")
        return value
    if name == "embed_fallback":
        if value not in EMBED_FALLBACKS:
            raise ImgIndexError(f"embed_fallback {value!r}: expected local or wait")
        return value
    if name == "keep":
        from imgindex.quarantine import KEEP_POLICIES

        if value not in KEEP_POLICIES:
            raise ImgIndexError(f"keep {value!r}: expected {', '.join(KEEP_POLICIES)}")
        return value
    if name == "quarantine":
        return _check_quarantine(value, roots)
    if name == "http":
        if value.strip():
            parse_address(value)
        return value.strip()
    if value not in VIEW_MODES:
        raise ImgIndexError(f"view_mode {value!r}: expected symlink or copy")
    return value


def _number(name: str, value: float) -> Any:
    """``value`` as the setting's type when it is finite and in its range."""
    kind, low, high = RANGES[name]
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (low <= value <= high or (name == "poll" and value == 0))
    if not ok or (kind is int and value != int(value)):
        raise ImgIndexError(name)
    return kind(value)


def _expected(name: str) -> str:
    kind, low, high = RANGES[name]
    what = "a whole number" if kind is int else "a number of seconds"
    extra = ", or 0 to use inotify" if name == "poll" else ""
    return f"{what} from {_plain(low)} to {_plain(high)}{extra}"


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _check_pattern(pattern: str) -> None:
    """A glob matched against one file or folder name: no '/', every '[' closed."""
    if "/" in pattern:
        raise ImgIndexError(
            f"ignore pattern {pattern!r}: patterns match names, not paths; leave out the '/'"
        )
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        j = i + 1 + (pattern[i + 1 : i + 2] == "!")
        j += pattern[j : j + 1] == "]"  # a ']' first in the set is one of its characters
        end = pattern.find("]", j)
        if end < 0:
            raise ImgIndexError(
                f"ignore pattern {pattern!r}: '[' opens a set that is never closed "
                "(write [[] for a literal '[')"
            )
        i = end + 1
    try:
        re.compile(fnmatch.translate(pattern))
    except re.error as exc:
        raise ImgIndexError(f"ignore pattern {pattern!r}: {exc}") from None


def _check_view_dir(value: str, roots: Sequence[Path]) -> str:
    if not value.strip():
        return ""
    if not value.startswith("/"):
        raise ImgIndexError(f"view_dir {value!r}: expected an absolute path, or '' for none")
    from imgindex.views import check_place

    try:
        check_place(Path(value), list(roots))  # a view inside a root would be indexed itself
    except ImgIndexError as exc:
        raise ImgIndexError(f"view_dir {exc}") from None
    return value


def _check_quarantine(value: str, roots: Sequence[Path]) -> str:
    if not value.strip():
        return ""
    if not value.startswith("/"):
        raise ImgIndexError(f"quarantine {value!r}: expected an absolute path, or ''")
    from imgindex.quarantine import check_outside_roots

    check_outside_roots("quarantine", Path(value), roots)
    return value


def parse_address(value: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT``: 127.0.0.1)."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ImgIndexError(f"http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8760")
    return host, int(port)


def _check_embed_url(value: str) -> str:
    """ "" or ``http(s)://HOST[:PORT][/PATH]``."""
    import urllib.parse

    value = value.strip()
    if not value:
        return ""
    expected = f"embed_url {value!r}: expected http://HOST:PORT of an embedding service, or ''"
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ImgIndexError(expected) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ImgIndexError(expected)
    return value


def load(engine: Engine, **overrides: Any) -> DaemonSettings:
    """Stored settings with ``overrides`` (those not None) on top. A stored value that is not
    valid (written by an older version, or a view_dir a new root now overlaps) is replaced by
    the default, with a warning; an invalid override raises ImgIndexError."""
    with engine.connect() as conn:
        folders = root_paths(conn)
        stored = meta.daemon_settings(conn)
    values: dict[str, Any] = {}
    for name, raw in stored.items():
        if name not in NAMES:
            continue
        try:
            values[name] = parse(name, raw, folders)
        except ImgIndexError as exc:
            default = getattr(DEFAULTS, name)
            log.warning("stored setting %s: %s; using the default, %r", name, exc, default)
    for name, value in overrides.items():
        if value is not None:
            values[name] = check(name, value, folders)
    return replace(DEFAULTS, **values)


def save(engine: Engine, name: str, raw: str) -> Any:
    """Check and store setting ``name`` (one transaction); a running daemon picks it up."""
    with engine.begin() as conn:
        value = parse(name, raw, root_paths(conn))
        meta.set_daemon_setting(conn, name, raw)
        meta.bump_config_version(conn)
    return value


def as_dict(settings: DaemonSettings) -> dict[str, Any]:
    return {
        n: (list(v) if isinstance(v, tuple) else v)
        for n, v in ((f, getattr(settings, f)) for f in NAMES)
    }
