"""The daemon answers ``imgindex similar`` for photos outside the library over a Unix socket,
so the model is loaded once instead of in every CLI process.

Protocol, one request per connection: a JSON line, then ``size`` raw bytes (the photo: the
client reads it, so the daemon needs no access to the caller's files or /tmp), then one JSON
line back.

    {"op": "similar", "path": "/abs/photo.jpg", "k": 10, "size": N} + N bytes
        -> {"matches": [{"path": ..., "score": ..., "cluster": ...}]} or {"error": "..."}
    {"op": "ping"} -> {"ok": true, "model": "efficientnet_lite0"}

The client half (``ask_similar``, ``ping``) imports neither torch nor the decoder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from imgindex.errors import ImgIndexError
from imgindex.library import Library, Match
from imgindex.paths import LibraryPaths

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 0.2  # no answer this fast: no daemon (the caller works locally)
ACCEPT_TIMEOUT_S = 0.5  # how fast the server notices stop()
READ_TIMEOUT_S = 10.0  # a client that stops sending is dropped after this long
MAX_LINE = 64 * 1024
MAX_PHOTO_BYTES = 512 * 1024 * 1024  # larger photos are embedded by the CLI itself
SOCKET_MODE = 0o660  # like the library's files: whoever may read the database may ask
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


# --- client ------------------------------------------------------------------------------------


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


# --- server ------------------------------------------------------------------------------------


class QueryService:
    """A thread of the daemon that embeds photos and searches the library for clients.

    It has its own read-only Library and embedder: nothing is shared with the ingest loop.
    ``start`` raises ImgIndexError when the service cannot be offered here; a model that fails
    to load is logged by the thread, which then stops (clients embed locally)."""

    def __init__(self, data_dir: Path, weights: Path | None = None) -> None:
        self.paths = LibraryPaths(data_dir)
        self.weights = weights
        self.ready = threading.Event()  # set once the socket answers
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="query-service", daemon=True)

    def start(self) -> None:
        """Check that the socket can be offered, then load and serve in the background."""
        path = self.paths.socket
        if len(os.fsencode(self._tmp_socket)) > _SUN_PATH_MAX:
            raise ImgIndexError(
                f"socket path {path} is too long (AF_UNIX paths have at most {_SUN_PATH_MAX} bytes)"
            )
        if ping(self.paths, timeout=1.0) is not None:
            raise ImgIndexError(f"another process already answers on {path}")
        path.unlink(missing_ok=True)  # left by a daemon that crashed: nobody answers on it
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving, remove the socket file, wait briefly for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():  # stuck in a request: clients must not wait on it
            self.paths.socket.unlink(missing_ok=True)

    def _run(self) -> None:
        try:
            self._load()
            if not self._stop.is_set():
                self._listener = self._bind()
                self.ready.set()
                log.info("answering similar-photo queries on %s", self.paths.socket)
                self._serve()
        except Exception as exc:  # never take the daemon down
            log.warning("similar-photo queries are not served by the daemon: %s", exc)
        finally:
            self._close()

    def _load(self) -> None:
        from imgindex.models import load_embedder

        self.lib = Library.open(self.paths.root)
        self.embedder = load_embedder(
            self.lib.model, weights=self.weights, cache_dir=self.lib.paths.weights, progress=False
        )
        size = self.embedder.spec.input_size
        self.embedder.embed(_blank(size))  # the first run is slow (kernels chosen, memory)
        self.lib.refresh()  # the index mapped and caught up before the first query

    def _bind(self) -> socket.socket:
        """Listen on a temporary name, then rename over the final one: clients never see a
        socket file that does not answer yet, and a stale one is replaced atomically."""
        tmp = self._tmp_socket
        tmp.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(tmp))
            os.chmod(tmp, SOCKET_MODE)
            listener.listen(16)
            listener.settimeout(ACCEPT_TIMEOUT_S)
            os.replace(tmp, self.paths.socket)
        except BaseException:
            listener.close()
            tmp.unlink(missing_ok=True)
            raise
        return listener

    @property
    def _tmp_socket(self) -> Path:
        return self.paths.root / f".{self.paths.socket.name}.tmp"  # one daemon: the write lock

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    self._handle(conn)
                except Exception:  # one bad request never ends the service
                    log.exception("a similar-photo query failed")

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self.paths.socket.unlink(missing_ok=True)
        with contextlib.suppress(AttributeError):
            self.lib.close()

    # --- one request -------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT_S)
        reader = conn.makefile("rb")
        try:
            head = json.loads(reader.readline(MAX_LINE))
        except ValueError:
            head = None
        try:
            if not isinstance(head, dict):
                raise ImgIndexError("bad request: expected one JSON object on the first line")
            reply = self._answer(head, reader)
        except ImgIndexError as exc:
            reply = {"error": str(exc)}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, head: dict[str, Any], reader: Any) -> dict[str, Any]:
        op = head.get("op")
        if op == "ping":
            return {"ok": True, "model": self.lib.model}
        if op != "similar":
            raise ImgIndexError(f"unknown request {op!r}")
        try:
            size, k = int(head["size"]), int(head.get("k", 10))
        except (KeyError, TypeError, ValueError):
            raise ImgIndexError("bad request: size and k must be integers") from None
        if not 0 <= size <= MAX_PHOTO_BYTES or k < 1:
            raise ImgIndexError(f"bad request: size {size}, k {k}")
        data = reader.read(size)
        if len(data) != size:
            raise ImgIndexError(f"request cut short: {len(data)} of {size} bytes")
        matches = self._similar(str(head.get("path", "photo")), data, k)
        return {"matches": [dataclasses.asdict(m) for m in matches]}

    def _similar(self, path: str, data: bytes, k: int) -> list[Match]:
        from imgindex.query import decode_photo

        img = decode_photo(path, data, self.lib.model)
        vector = self.embedder.embed(img.pixels[None])[0]
        self.lib.refresh()  # caught up with what the daemon's writer committed since
        return self.lib.search(vector, k)


def _blank(size: int) -> Any:
    import numpy as np

    return np.zeros((1, size, size, 3), dtype=np.uint8)
