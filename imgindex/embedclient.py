"""Embedding through a remote service (``imgindex embed-server``), with a local fallback.

``RemoteEmbedder`` sends batches of decoded pixels to the service over HTTP (the wire format
is ``imgindex.embedwire``). ``ChosenEmbedder`` is what ``index`` and the daemon hand their
Ingestor: the service when one is configured and answers, otherwise the local model
(``embed_fallback local``) or nothing until the service is back (``embed_fallback wait``). It
is chosen in one place, ``choose``.

The client is the standard library's ``http.client``: one keep-alive connection per thread,
no new dependency on the NAS side (only the server needs the ``embed`` extra), and nothing
here imports torch: with ``embed_fallback wait`` the model is never loaded on this machine.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgindex.embedwire import (
    COUNT_HEADER,
    EMBED_PATH,
    FORMAT_HEADER,
    INFO_PATH,
    MAX_BATCH,
    MODEL_HEADER,
    TOKEN_ENV,
    WireError,
    decode_answer,
    encode_batch,
)
from imgindex.errors import ImgIndexError
from imgindex.models.spec import Embedder, EmbeddingPostponed, ModelSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0  # a desktop that is off: known to be down this fast
READ_TIMEOUT_S = 120.0  # a batch on a slow CPU service may take this long
RETRY_S = 30.0  # while the service is down: asked again at most this often
FALLBACKS = ("local", "wait")


class ServiceUnavailable(Exception):
    """The service cannot be reached or cannot embed right now (it may come back)."""


class ModelFailed(Exception):
    """The service's model failed on this batch (the Ingestor then tries each image alone, and
    the one it cannot take fails with this reason, as with a local model)."""


class ServiceRefused(ImgIndexError):
    """The service answered but refuses this client: its token, its model, its limits."""


def read_token(token_file: str | Path | None) -> str | None:
    """The shared token: the first line of ``token_file``, else ``$IMGINDEX_EMBED_TOKEN``,
    else None."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ImgIndexError(
                f"cannot read the embedding service's token from {token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ImgIndexError(f"the token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


class RemoteEmbedder:
    """The model of a remote service, for one library's model. ``embed_labelled`` raises
    ServiceUnavailable when the service is down and ServiceRefused when it says no."""

    def __init__(
        self,
        url: str,
        spec: ModelSpec,
        token: str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImgIndexError(f"embed_url {url!r}: expected http://HOST:PORT")
        self.url = url.rstrip("/")
        self.spec = spec
        self.device = "remote"
        self._parts = parts
        self._base = parts.path.rstrip("/")
        self._token = token
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._local = threading.local()  # one keep-alive connection per thread
        self._max_batch = MAX_BATCH

    # --- requests ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The service's model, dimension, device and limits; ServiceRefused when its model is
        not the library's."""
        data = self._request("GET", INFO_PATH, None, {})
        if not isinstance(data, dict):
            raise ServiceUnavailable(f"{self.url} does not answer as an embedding service")
        if data.get("model") != self.spec.name:
            raise ServiceRefused(
                f"the embedding service at {self.url} runs model {data.get('model')!r}, the "
                f"library uses {self.spec.name}: start it with --model {self.spec.name}"
            )
        self._max_batch = max(1, min(MAX_BATCH, int(data.get("max_batch") or MAX_BATCH)))
        return data

    def embed_labelled(self, pixels: np.ndarray) -> tuple[np.ndarray, list[int | None]]:
        """Unit vectors and ImageNet top-1 classes (None for a model without a head)."""
        vectors: list[np.ndarray] = [np.zeros((0, self.spec.dim), np.float32)]
        labels: list[int | None] = []
        for start in range(0, len(pixels), self._max_batch):
            chunk = pixels[start : start + self._max_batch]
            headers = {
                MODEL_HEADER: self.spec.name,
                FORMAT_HEADER: "raw",
                COUNT_HEADER: str(len(chunk)),
                "Content-Type": "application/octet-stream",
            }
            data = self._request("POST", EMBED_PATH, encode_batch(chunk), headers)
            try:
                answer = decode_answer(data, self.spec.name, len(chunk), self.spec.dim)
            except WireError as exc:
                raise ServiceUnavailable(f"{self.url} gave a bad answer: {exc}") from None
            vectors.append(answer.vectors)
            labels += answer.labels if answer.labels is not None else [None] * len(chunk)
        return np.concatenate(vectors), labels

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.embed_labelled(pixels)[0]

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        raise ImgIndexError("the embedding service gives ImageNet top-1 classes, not logits")

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        """One request, on this thread's connection; a connection the server closed while it
        was idle is replaced once (the request is idempotent)."""
        if self._token:
            headers = {**headers, "Authorization": f"Bearer {self._token}"}
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request(method, self._base + path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close()
                if attempt == 2 or not getattr(self._local, "reused", False):
                    raise ServiceUnavailable(f"{self.url}: {_reason(exc)}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                raise ServiceUnavailable(f"{self.url}: {_reason(exc)}") from None
        self._local.reused = True
        if resp.status != 200:
            if resp.will_close:
                self._close()
            self._refuse(resp.status, raw)
        try:
            return json.loads(raw)
        except ValueError:
            raise ServiceUnavailable(f"{self.url} gave an answer that is not JSON") from None

    def _refuse(self, status: int, raw: bytes) -> None:
        try:
            detail = str(json.loads(raw).get("detail"))
        except (ValueError, AttributeError):
            detail = raw[:200].decode("utf-8", "replace")
        what = f"the embedding service at {self.url} answered {status}: {detail}"
        if status == 401:
            raise ServiceRefused(
                f"{what} (set the same token here: embed_token_file or ${TOKEN_ENV})"
            )
        if 400 <= status < 500:
            raise ServiceRefused(what)
        if status == 500:  # the model failed on this batch: as the local one would, alone
            raise ModelFailed(detail)
        raise ServiceUnavailable(what)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = (
                http.client.HTTPSConnection
                if self._parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = kind(self._parts.hostname or "", self._parts.port, timeout=self._connect_timeout)
            conn.connect()  # connect fast-or-fail, then wait long for answers
            if conn.sock is not None:
                conn.sock.settimeout(self._read_timeout)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn, self._local.reused = conn, False
        return conn

    def _close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Hooks:
    """What the caller is told, and asked, while the service is down."""

    #: stop waiting now? (the daemon: SIGTERM, or a setting changed); then the batch is
    #: postponed (``EmbeddingPostponed``): nothing of it is committed
    interrupt: Callable[[], bool] = lambda: False
    heartbeat: Callable[[], None] = lambda: None  # called while waiting (the watchdog)
    on_change: Callable[[], None] = lambda: None  # which embedder is in use changed


class ChosenEmbedder:
    """The remote service when it answers, else the local model (``fallback`` "local") or a
    wait for the service (``fallback`` "wait"); the service is asked again every ``retry_s``
    seconds (sooner at first, when waiting), so it is picked up again when it returns.

    ``embed_labelled`` (ingest) waits; ``embed`` (a query for one photo) never does: it
    raises ImgIndexError when the service is down and there is no local fallback."""

    def __init__(
        self,
        spec: ModelSpec,
        local: Callable[[], Embedder],
        remote: RemoteEmbedder | None = None,
        fallback: str = "local",
        *,
        retry_s: float = RETRY_S,
        hooks: Hooks | None = None,
    ) -> None:
        self.spec = spec
        self.remote = remote
        self.fallback = fallback
        self.retry_s = retry_s
        self.hooks = hooks or Hooks()
        self.using = "service" if remote else "local"
        self.device = "remote" if remote else "cpu"  # the local model's, once loaded
        self.problem: str | None = None
        self.held = 0  # images of the batch waiting for the service
        self._local_loader = local
        self._local: Embedder | None = None
        self._next_try = 0.0
        self._backoff = min(1.0, retry_s)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """For ``status``: which embedder is in use, why, and how many images it holds."""
        out: dict[str, Any] = {"using": self.using}
        if self.remote is not None:
            out.update(url=self.remote.url, fallback=self.fallback, waiting=self.held)
            out["problem"] = self.problem
        return out

    def check(self) -> None:
        """Ask the service once, now: ServiceRefused when it refuses this client (another
        model, a wrong token); a service that is down is noted (and logged) as such."""
        if self.remote is None:
            return
        try:
            self.remote.info()
        except ServiceUnavailable as exc:
            self._down(str(exc))

    def use(self, remote: RemoteEmbedder | None, fallback: str) -> None:
        """Switch to another service (or none) and fallback: the settings changed."""
        self.remote, self.fallback = remote, fallback
        self._next_try, self.problem = 0.0, None
        self._switch("service" if remote else "local")

    def local(self) -> Embedder:
        """The local model, loaded on first use (this is where torch is imported)."""
        with self._lock:
            if self._local is None:
                self._local = self._local_loader()
            return self._local

    # --- the Embedder interface ---------------------------------------------------------

    def embed_labelled(self, pixels: np.ndarray) -> tuple[np.ndarray, Sequence[int | None]]:
        """Vectors and labels from the service, or the local model, or, waiting, the service
        once it is back; EmbeddingPostponed when ``hooks.interrupt`` says stop waiting."""
        while True:
            answer = self._try_remote(pixels)
            if answer is not None:
                return answer
            if self.fallback == "local" or self.remote is None:
                self._switch("local")
                return _labelled(self.local(), pixels)
            self._wait(len(pixels))

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        answer = self._try_remote(pixels)
        if answer is not None:
            return answer[0]
        if self.fallback == "local" or self.remote is None:
            return self.local().embed(pixels)
        raise ImgIndexError(f"the embedding service is unavailable ({self.problem})")

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        return self.local().classify(pixels)

    # --- switching --------------------------------------------------------------------------

    def _try_remote(self, pixels: np.ndarray) -> tuple[np.ndarray, Sequence[int | None]] | None:
        """The service's answer; None when there is no service, or it is down (then it is not
        asked again before its retry time)."""
        if self.remote is None or (self.using != "service" and time.monotonic() < self._next_try):
            return None
        try:
            answer = self.remote.embed_labelled(pixels)
        except (ServiceUnavailable, ServiceRefused) as exc:
            self._down(str(exc))
            return None
        self._backoff = min(1.0, self.retry_s)
        self.held = 0
        if self.using != "service":
            log.warning("the embedding service at %s is back: embedding there", self.remote.url)
        self._switch("service", problem=None)
        return answer

    def _down(self, why: str) -> None:
        with self._lock:
            first = self.problem != why or self.using == "service"
            if self.fallback == "wait":
                self._next_try = time.monotonic() + self._backoff
                self._backoff = min(self.retry_s, self._backoff * 2)
            else:
                self._next_try = time.monotonic() + self.retry_s
        if first:
            then = "embedding locally" if self.fallback == "local" else "holding the queue"
            log.warning("the embedding service is unavailable: %s; %s until it answers", why, then)
        self._switch(self.fallback if self.fallback == "local" else "waiting", problem=why)

    def _wait(self, count: int) -> None:
        """Wait until the service is due to be asked again (or ``interrupt``)."""
        if self.held != count:
            self.held = count
            self.hooks.on_change()
        while True:
            self.hooks.heartbeat()
            if self.hooks.interrupt():
                self.held = 0  # postponed: nothing is held any more
                raise EmbeddingPostponed("stopped waiting for the embedding service")
            left = self._next_try - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))

    def _switch(self, using: str, problem: str | None = "") -> None:
        changed = using != self.using or (problem != "" and problem != self.problem)
        self.using = using
        self.device = "remote" if using == "service" else getattr(self._local, "device", "cpu")
        if problem != "":
            self.problem = problem
        if changed:
            self.hooks.on_change()


def _labelled(embedder: Embedder, pixels: np.ndarray) -> tuple[np.ndarray, Sequence[int | None]]:
    labelled = getattr(embedder, "embed_labelled", None)
    if labelled is None:
        return embedder.embed(pixels), [None] * len(pixels)
    vectors, labels = labelled(pixels)
    return vectors, [int(x) for x in labels]


def choose(
    spec: ModelSpec,
    local: Callable[[], Embedder],
    *,
    url: str = "",
    token_file: str = "",
    fallback: str = "local",
    retry_s: float = RETRY_S,
    hooks: Hooks | None = None,
) -> ChosenEmbedder:
    """The one place where the embedder is chosen: the service at ``url`` (with the token of
    ``token_file`` or ``$IMGINDEX_EMBED_TOKEN``), falling back as ``fallback`` says, or the
    local model alone when there is no ``url``."""
    remote = RemoteEmbedder(url, spec, read_token(token_file)) if url else None
    return ChosenEmbedder(spec, local, remote, fallback, retry_s=retry_s, hooks=hooks)
