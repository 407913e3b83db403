"""The daemon answers ``imgindex similar`` for photos outside the library over a Unix socket,
so the model is loaded once instead of in every CLI process: this is the server, which the
daemon runs with the model it loaded; the client and the protocol are ``imgindex.client``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from imgindex.client import MAX_LINE, MAX_PHOTO_BYTES, ping
from imgindex.errors import ImgIndexError
from imgindex.library import Library, Match
from imgindex.models import Embedder
from imgindex.paths import LibraryPaths
from imgindex.query import decode_photo

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT_S = 0.5  # how fast the server notices stop()
READ_TIMEOUT_S = 10.0  # a client that stops sending is dropped after this long
SOCKET_MODE = 0o660  # like the library's files: whoever may read the database may ask
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


class QueryService:
    """A thread of the daemon that embeds photos and searches the library for clients.

    It has its own read-only Library; the embedder is the daemon's, shared with its ingest
    loop (a loaded model keeps no state between calls). ``start`` raises ImgIndexError when the
    service cannot be offered here; a library that fails to open is logged by the thread, which
    then stops (clients embed locally)."""

    def __init__(self, data_dir: Path, embedder: Embedder) -> None:
        self.paths = LibraryPaths(data_dir)
        self.embedder = embedder
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
        self.lib = Library.open(self.paths.root)
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
        img = decode_photo(path, data, self.lib.model)
        vector = self.embedder.embed(img.pixels[None])[0]
        self.lib.refresh()  # caught up with what the daemon's writer committed since
        return self.lib.search(vector, k)


def _blank(size: int) -> Any:
    import numpy as np

    return np.zeros((1, size, size, 3), dtype=np.uint8)
