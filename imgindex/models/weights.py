"""Fetching weight files: once, atomically, verified, with an optional mirror.

A URL's file name carries the sha256 prefix of its bytes (torchvision's ``name-<hash>.pth``
convention); that prefix is the only expectation checked, so a file is trusted iff its name
and bytes agree. ``IMGINDEX_WEIGHTS_MIRROR`` replaces ``https://download.pytorch.org/models/``
by another base (``http://host/dir/`` or ``file:///dir/``); the file name, and hence the
hash, stays that of the canonical URL. Downloads land in a temp file beside the target and
are renamed into place only after verification, so the cache never holds a partial file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from imgindex import fsafe
from imgindex.errors import WeightsUnavailable

CANONICAL_BASE = "https://download.pytorch.org/models/"
MIRROR_ENV = "IMGINDEX_WEIGHTS_MIRROR"
_HASH_RE = re.compile(r"-([0-9a-f]{6,64})\.[^/]*$")
_CHUNK = 1 << 20
_TIMEOUT_S = 30


def mirrored(url: str) -> str:
    """URL with its canonical base replaced by ``$IMGINDEX_WEIGHTS_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and url.startswith(CANONICAL_BASE):
        return mirror.rstrip("/") + "/" + url[len(CANONICAL_BASE) :]
    return url


def expected_hash(url: str) -> str | None:
    """The sha256 prefix carried by URL's file name (``vgg16-397923af.pth`` -> 397923af)."""
    match = _HASH_RE.search(url.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def cached_download(url: str, cache_dir: Path, *, progress: bool = True) -> Path:
    """The file of URL in CACHE_DIR, downloading it (via the mirror, if set) when absent."""
    target = Path(cache_dir) / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    source = mirrored(url)
    fix = "download it elsewhere and pass --weights FILE"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(source, target, expected_hash(url), progress=progress)
    except WeightsUnavailable:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise WeightsUnavailable(
            f"cannot download weights from {source}: {_reason(exc)}; {fix}"
        ) from None
    return target


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for a failed download."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return " ".join(str(exc).split()) or type(exc).__name__


def _download(source: str, target: Path, want: str | None, *, progress: bool) -> None:
    """Stream SOURCE into a temp file beside TARGET, check WANT, rename; cleans up on failure."""

    def fill(out: IO[bytes]) -> None:
        with urllib.request.urlopen(source, timeout=_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            digest = _copy(resp, out, total, target.name if progress else None)
        if want and not digest.startswith(want):
            raise WeightsUnavailable(
                f"weights from {source} are corrupt (sha256 {digest[: len(want)]}, expected "
                f"{want}); try again, or download it elsewhere and pass --weights FILE"
            )

    fsafe.atomic_write(target, fill)


def _copy(src: IO[bytes], dst: IO[bytes], total: int, label: str | None) -> str:
    """Copy SRC to DST, returning the sha256 hex digest; progress on stderr if LABEL."""
    sha, done = hashlib.sha256(), 0
    bar = _Progress(label, total) if label else None
    try:
        while chunk := src.read(_CHUNK):
            sha.update(chunk)
            dst.write(chunk)
            done += len(chunk)
            if bar:
                bar.update(done)
        if total and done != total:
            raise ValueError(f"connection closed after {done} of {total} bytes")
    finally:
        if bar:
            bar.close(done)
    return sha.hexdigest()


class _Progress:
    """A progress bar redrawn in place on a terminal; a start and an end line otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.shown = label, total, 0.0
        self.tty = sys.stderr.isatty()
        if not self.tty:
            self._write(f"downloading {label} ({_mb(total) if total else 'size unknown'})\n")

    def update(self, done: int) -> None:
        if self.tty and time.monotonic() - self.shown > 0.2:
            self.shown = time.monotonic()
            self._write(self._line(done))

    def close(self, done: int) -> None:
        ok = not self.total or done == self.total
        end = "" if ok else " (incomplete)"
        self._write(f"{self._line(done)}{end}\n" if self.tty else f"downloaded {_mb(done)}{end}\n")

    def _line(self, done: int) -> str:
        if not self.total:
            return f"\rdownloading {self.label} {_mb(done)}"
        filled = 30 * done // self.total
        bar = "#" * filled + " " * (30 - filled)
        return f"\rdownloading {self.label} [{bar}] {100 * done // self.total:3d}% {_mb(done)}"

    @staticmethod
    def _write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
