"""``imgindex embed-server``: the model on a machine with the compute (a desktop with a GPU),
for libraries on machines without it (a NAS). It embeds batches of pixels the client decoded
(the wire format is ``imgindex.embedwire``); it needs no library and no access to the photos.

Security: it binds 127.0.0.1 unless told otherwise; any other address needs a shared token
(``$IMGINDEX_EMBED_TOKEN`` or ``--token-file``), which every request must then carry and which
is compared in constant time; the batch size and the request size are capped, the body is
read no further than its cap, and a request that breaks the rules gets a 4xx and one log
line. FastAPI on uvicorn (the ``embed`` extra).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from imgindex.embedwire import (
    COUNT_HEADER,
    EMBED_PATH,
    FORMAT_HEADER,
    FORMATS,
    INFO_PATH,
    MAX_BATCH,
    MODEL_HEADER,
    WireError,
    decode_batch,
    encode_answer,
    max_body,
)
from imgindex.errors import ImgIndexError
from imgindex.httpbody import read_body
from imgindex.models import Embedder

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # more at once are answered 503 by uvicorn


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): only then may the server run
    without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, treat it as reachable


class EmbedService:
    """The model behind the HTTP API: one batch at a time (the model is the bottleneck;
    payloads are decoded in parallel)."""

    def __init__(self, embedder: Embedder, *, max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        spec = self.embedder.spec
        return {
            "model": spec.name,
            "dim": spec.dim,
            "input_size": spec.input_size,
            "device": self.embedder.device,
            "max_batch": self.max_batch,
            "formats": list(FORMATS),
        }

    def embed(self, pixels: np.ndarray) -> dict[str, Any]:
        """The JSON answer for a batch of pixels."""
        with self._lock:
            labelled = getattr(self.embedder, "embed_labelled", None)
            if labelled is None:
                vectors, labels = self.embedder.embed(pixels), None
            else:
                vectors, labels = labelled(pixels)
        if not np.isfinite(vectors).all():
            raise ValueError("the model gave a vector that is not finite")
        return encode_answer(self.embedder.spec.name, self.embedder.device, vectors, labels)


def create_app(service: EmbedService, token: str | None = None) -> FastAPI:
    """The ASGI app: ``GET /v1/info``, ``POST /v1/embed``; every request carries ``token`` as
    ``Authorization: Bearer TOKEN`` when there is one."""
    app = FastAPI(
        title="imgindex embedding service", docs_url=None, redoc_url=None, openapi_url=None
    )
    spec = service.embedder.spec

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        client = request.client.host if request.client else "?"
        log.warning("%s %s from %s: %d %s", request.method, request.url.path, client,
                    exc.status_code, exc.detail)  # fmt: skip
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def authorise(request: Request, call_next: Callable[..., Any]) -> Any:
        if token is not None and not _token_ok(request.headers.get("authorization", ""), token):
            return await refused(
                request,
                HTTPException(
                    401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"}
                ),
            )
        return await call_next(request)

    @app.get(INFO_PATH)
    def info() -> dict[str, Any]:
        return service.info()

    @app.post(EMBED_PATH)
    async def embed(request: Request) -> dict[str, Any]:
        fmt, count = _batch_head(request, spec.name, service.max_batch)
        body = await read_body(request, max_body(count, spec.input_size, fmt))
        try:
            pixels = await run_in_threadpool(decode_batch, body, fmt, count, spec.input_size)
        except WireError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            return await run_in_threadpool(service.embed, pixels)
        except Exception as exc:
            log.error("the model failed on a batch of %d: %r", count, exc)
            raise HTTPException(500, f"the model failed: {exc}") from None

    return app


def _token_ok(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode()
    )


def _batch_head(request: Request, model: str, max_batch: int) -> tuple[str, int]:
    """``(format, count)`` from the headers: 409 for another model, 413 for too many images,
    400 for anything missing or malformed."""
    asked = request.headers.get(MODEL_HEADER)
    if asked is None:
        raise HTTPException(400, f"no {MODEL_HEADER} header: say which model the vectors are for")
    if asked != model:
        raise HTTPException(
            409, f"this service embeds with {model}, not {asked}: start one with --model {asked}"
        )
    fmt = request.headers.get(FORMAT_HEADER, "raw")
    if fmt not in FORMATS:
        raise HTTPException(400, f"{FORMAT_HEADER} {fmt!r}: expected one of {', '.join(FORMATS)}")
    raw = request.headers.get(COUNT_HEADER, "")
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise HTTPException(400, f"{COUNT_HEADER} {raw[:20]!r}: expected a positive whole number")
    if int(raw) > max_batch:
        raise HTTPException(413, f"a batch of {raw} images; this service takes at most {max_batch}")
    return fmt, int(raw)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise ImgIndexError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def check_token(host: str, token: str | None) -> None:
    """A non-loopback bind without a token is refused."""
    if token is None and not is_loopback(host):
        raise ImgIndexError(
            f"--host {host} is reachable from other machines: set a shared token first "
            "($IMGINDEX_EMBED_TOKEN, or --token-file FILE), and the same one on the clients"
        )


def serve(
    embedder: Embedder,
    host: str,
    port: int,
    *,
    token: str | None,
    max_batch: int = MAX_BATCH,
    on_ready: Callable[[str], None] = lambda _url: None,
) -> None:
    """Serve until SIGTERM/SIGINT. ``on_ready`` gets the URL once the socket listens."""
    import uvicorn

    check_token(host, token)
    service = EmbedService(embedder, max_batch=max_batch)
    size = embedder.spec.input_size
    service.embed(np.zeros((1, size, size, 3), np.uint8))  # the first batch is slow: not a client's
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        create_app(service, token),
        log_config=None,  # our logging (stderr, journald-friendly)
        access_log=False,
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=30,
    )
    on_ready(url)
    uvicorn.Server(config).run(sockets=[sock])
