"""The client of the daemon's query socket: ``imgindex similar`` asks the running daemon, whose
model is already loaded (the server is ``imgindex.service``). It imports neither torch nor the
decoder.

Protocol, one request per connection: a JSON line, then ``size`` raw bytes (the photo: the
client reads it, so the daemon needs no access to the caller's files or /tmp), then one JSON
line back.

    {"op": "similar", "path": "/abs/photo.jpg", "k": 10, "size": N} + N bytes
        -> {"matches": [{"path": ..., "score": ..., "cluster": ...}]} or {"error": "..."}
    {"op": "ping"} -> {"ok": true, "model": "efficientnet_lite0"}
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

from imgindex.errors import ImgIndexError
from imgindex.library import Match
from imgindex.paths import LibraryPaths

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 0.2  # no answer this fast: no daemon (the caller works locally)
MAX_LINE = 64 * 1024  # the longest request line the server reads
MAX_PHOTO_BYTES = 512 * 1024 * 1024  # larger photos are embedded by the CLI itself


def ask_similar(
    paths: LibraryPaths, photo: Path, k: int, timeout: float = 30.0
) -> list[Match] | None:
    """The daemon's ``k`` nearest images to ``photo``; None when no daemon answers.

    Raises ImgIndexError with the daemon's message when it answers with an error (a photo
    that does not decode)."""
    try:
        data = photo.read_bytes()
    except OSError:
        return None  # the local path reports why
    if len(data) > MAX_PHOTO_BYTES:
        return None
    started = time.perf_counter()
    head = {"op": "similar", "path": str(photo), "k": k, "size": len(data)}
    reply = _ask(paths.socket, head, data, timeout)
    if reply is None:
        return None
    if "error" in reply:
        raise ImgIndexError(str(reply["error"]))
    log.info("answered by the daemon in %.0f ms", 1000 * (time.perf_counter() - started))
    return [Match(m["path"], float(m["score"]), m["cluster"]) for m in reply.get("matches", [])]


def ask_similar_bytes(
    paths: LibraryPaths, name: str, data: bytes, k: int, timeout: float = 30.0
) -> list[Match] | None:
    """The daemon's ``k`` nearest images to a photo given as bytes (an upload); None when no
    daemon answers. ImgIndexError with the daemon's message when it refuses the photo."""
    if len(data) > MAX_PHOTO_BYTES:
        return None
    reply = _ask(
        paths.socket, {"op": "similar", "path": name, "k": k, "size": len(data)}, data, timeout
    )
    if reply is None:
        return None
    if "error" in reply:
        raise ImgIndexError(str(reply["error"]))
    return [
        Match(m["path"], float(m["score"]), m["cluster"], m.get("host", ""))
        for m in reply.get("matches", [])
    ]


def ping(paths: LibraryPaths, timeout: float = 5.0) -> dict[str, Any] | None:
    """The daemon's ``{"ok": true, "model": ...}``, or None when none answers."""
    return _ask(paths.socket, {"op": "ping"}, b"", timeout)


def _ask(
    sock_path: Path, head: dict[str, Any], body: bytes, timeout: float
) -> dict[str, Any] | None:
    """One round trip; None when nobody answers or the answer is cut short."""
    if not sock_path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(sock_path))
        except OSError:  # refused (a stale socket), path too long, not allowed, too slow
            return None
        try:
            sock.settimeout(timeout)
            sock.sendall(json.dumps(head).encode() + b"\n" + body)
            sock.shutdown(socket.SHUT_WR)
            with sock.makefile("rb") as reader:
                reply = json.loads(reader.readline())
        except (OSError, ValueError) as exc:
            log.warning("the daemon did not answer (%s); embedding here instead", exc)
            return None
    return reply if isinstance(reply, dict) else None
