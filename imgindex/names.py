"""File names as the file system holds them: bytes, which need not be UTF-8.

Python hands such names over as ``str`` with each byte that is not UTF-8 turned into a lone
surrogate (U+DC80..U+DCFF, the ``surrogateescape`` error handler), so ``os.fsencode`` gives the
exact bytes back. This module keeps that promise at the three places where text leaves Python:

- **storage** (``schema.FsPath``): a name that is valid UTF-8 is stored as TEXT, as always;
  any other is stored as its raw bytes (a BLOB), so nothing is lost and no two names collide;
- **terminals** (``shown``): a name with bytes that are not UTF-8 or characters a terminal
  cannot show (newlines, control characters) is printed in the shell's ``$'...'`` quoting,
  one line, pasteable into bash;
- **JSON** (``for_json``): every string is valid JSON; a path that is not UTF-8 keeps its
  undecodable bytes as ``\\udcXX`` escapes, and objects with a ``"path"`` get ``"path_b64"``,
  the name's exact bytes in base64, beside it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def is_utf8(path: str) -> bool:
    """Whether ``path`` came from a name that is valid UTF-8 (no escaped bytes in it)."""
    return _SURROGATE.search(path) is None


def to_bytes(path: str) -> bytes:
    """The exact bytes of a name."""
    return os.fsencode(path)


def from_bytes(raw: bytes) -> str:
    """A name's bytes as the ``str`` Python's own file functions use."""
    return os.fsdecode(raw)


def shown(path: str) -> str:
    """``path`` for a terminal: as it is when every character is printable, else quoted as
    ``$'...'`` with ``\\xNN`` for bytes that are not UTF-8 or characters that are not
    printable, so one name is always one line and can be pasted back into a shell."""
    if path.isprintable() and is_utf8(path):
        return path
    return "$'" + "".join(_escape(ch) for ch in path) + "'"


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if not ch.isprintable():
        return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return ch


def printable(message: str) -> str:
    """A message for one line of a terminal: escaped bytes and control characters shown as
    ``\\xNN``/``\\n`` (for error lines, whose paths are not quoted)."""
    if message.isprintable() and is_utf8(message):
        return message
    return "".join(ch if ch.isprintable() and is_utf8(ch) else _escape(ch) for ch in message)


def for_json(data: Any) -> Any:
    """``data`` with ``"path_b64"`` (the exact bytes, base64) added beside every ``"path"``
    that is not valid UTF-8."""
    if isinstance(data, dict):
        out = {k: for_json(v) for k, v in data.items()}
        path = data.get("path")
        if isinstance(path, str) and not is_utf8(path):
            out["path_b64"] = base64.b64encode(to_bytes(path)).decode("ascii")
        return out
    if isinstance(data, list | tuple):
        return [for_json(v) for v in data]
    return data


def dumps(data: Any, **kwargs: Any) -> str:
    """JSON text of ``data`` (see ``for_json``) that any encoder can print: characters stay
    themselves, bytes that are not UTF-8 become ``\\udcXX`` escapes."""
    text = json.dumps(for_json(data), ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
