"""The web page's password (a salted scrypt hash in the library), its signed session cookies
and CSRF tokens. Only the standard library: ``hashlib.scrypt`` and HMAC-SHA256."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from imgindex import fsafe
from imgindex.db import Engine, meta
from imgindex.errors import ImgIndexError

SECRET_NAME = "web-secret"  # in the data dir, 0600: the key sessions are signed with
SESSION_S = 30 * 86400.0  # a session lasts this long
MIN_PASSWORD = 8
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64) of ``password`` with a fresh salt."""
    if len(password) < MIN_PASSWORD:
        raise ImgIndexError(f"the password must have at least {MIN_PASSWORD} characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    parts = [str(_SCRYPT[k]) for k in "nrp"] + [_b64(salt), _b64(digest)]
    return "scrypt$" + "$".join(parts)


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (constant time in the digest comparison)."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def set_password(engine: Engine, password: str | None) -> None:
    """Store the password's hash (None: remove it)."""
    hashed = None if password is None else hash_password(password)
    with engine.begin() as conn:
        meta.set_http_password(conn, hashed)


def stored_password(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return meta.http_password(conn)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(data_dir: Path) -> bytes:
    """The data dir's signing key, made on first use (0600); a read-only data dir gets one
    for this process only (sessions end with it)."""
    path = data_dir / SECRET_NAME
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    with contextlib.suppress(OSError):
        fsafe.atomic_write(path, lambda fh: fh.write(key.hex().encode()), mode=0o600)
    return key


@dataclass(frozen=True)
class Session:
    sid: str
    authenticated: bool
    expires: float


class Signer:
    """Signed session cookies and the CSRF token of each session."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, what: bytes) -> str:
        return _b64(hmac.new(self.key, what, hashlib.sha256).digest())

    def new(self, authenticated: bool = False) -> Session:
        return Session(secrets.token_urlsafe(16), authenticated, time.time() + SESSION_S)

    def cookie(self, s: Session) -> str:
        body = _b64(json.dumps([s.sid, s.authenticated, int(s.expires)]).encode())
        return f"{body}.{self._mac(body.encode())}"

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie that is ours, intact and not expired; else None."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac.encode(), self._mac(body.encode()).encode()):
            return None
        try:
            sid, authenticated, expires = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(sid, str) or float(expires) < time.time():
            return None
        return Session(sid, bool(authenticated), float(expires))

    def csrf(self, s: Session) -> str:
        return self._mac(b"csrf|" + s.sid.encode())

    def csrf_ok(self, s: Session | None, token: str | None) -> bool:
        return (
            s is not None
            and bool(token)
            and hmac.compare_digest((token or "").encode(), self.csrf(s).encode())
        )
