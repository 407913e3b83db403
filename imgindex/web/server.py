"""Serving the web page: ``imgindex serve`` (in the foreground, without a daemon) and the
daemon's ``--http`` (a thread beside its loop, sharing its loaded model). uvicorn, the
``web`` extra."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgindex.errors import ImgIndexError
from imgindex.models import Embedder
from imgindex.settings import parse_address
from imgindex.web.auth import Signer, load_secret, stored_password
from imgindex.web.data import WebLibrary

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, password: str | None, read_only: bool, no_auth: bool) -> None:
    """Any bind but loopback needs a password, or ``--read-only --no-auth`` together."""
    if no_auth and not read_only:
        raise ImgIndexError("--no-auth is only allowed with --read-only (nothing can change)")
    if is_loopback(host):
        return
    if no_auth:
        return
    if password is None:
        raise ImgIndexError(
            f"--http {host} is reachable from other machines: set a password first "
            "(`imgindex config http_password`), or serve with --read-only --no-auth "
            "on a trusted network"
        )


class WebServer:
    """The web page of one library on ``address`` (HOST:PORT; port 0: any free one)."""

    def __init__(
        self,
        data_dir: Path,
        address: str,
        *,
        database: str | None = None,
        read_only: bool = False,
        no_auth: bool = False,
        embedder: Embedder | None = None,
    ) -> None:
        from imgindex.embedserver import bind
        from imgindex.web.app import Policy, create_app

        host, port = parse_address(address)
        self.web = WebLibrary(data_dir, database=database, embedder=embedder)
        try:
            password = None if no_auth else stored_password(self.web.lib.engine)
            check_bind(host, password, read_only, no_auth)
            policy = Policy(password, read_only or self.web.lib.read_only, is_loopback(host))
            app = create_app(self.web, Signer(load_secret(self.web.lib.paths.root)), policy)
            self.sock = bind(host, port)
        except BaseException:
            self.web.close()
            raise
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.sock.getsockname()[1]}"
        self.policy = policy
        import uvicorn

        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=30,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        how = "read-only" if self.policy.read_only else "read-write"
        login = "password" if self.policy.password else "no login"
        return f"web page on {self.url}/ ({how}, {login})"

    def run(self) -> None:
        """Serve in this thread until SIGTERM/SIGINT."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.web.close()

    def start(self) -> None:
        """Serve in a thread (the daemon's); ``stop`` ends it."""
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception as exc:  # never take the daemon down
            log.warning("the web page stopped: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.web.close()


def serve(
    data_dir: Path,
    address: str,
    *,
    database: str | None = None,
    read_only: bool = False,
    no_auth: bool = False,
    on_ready: Callable[[str], Any] = lambda _s: None,
) -> None:
    """``imgindex serve``: the web page until SIGTERM/SIGINT."""
    server = WebServer(data_dir, address, database=database, read_only=read_only, no_auth=no_auth)
    on_ready(server.describe())
    server.run()
