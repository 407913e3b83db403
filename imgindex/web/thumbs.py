"""Thumbnails and previews of indexed images, by id: WebP made on demand from the image's file
and cached in the data dir (``thumbs/``). An id's file never changes content (a changed file
gets a new row), so an id and a size name one picture: that is its cache key and ETag."""

from __future__ import annotations

import io
import os
from pathlib import Path

from imgindex import fsafe

THUMBS_DIR = "thumbs"
SIZES = {"thumb": 256, "preview": 1280}
QUALITY = 80
MAX_SOURCE_BYTES = 512 * 1024 * 1024


class NoPicture(Exception):
    """The image's file is gone, unreadable or does not decode here."""


def etag(image_id: int, kind: str, mtime_ns: int) -> str:
    return f'"{image_id}-{kind}-{mtime_ns}"'


def picture(data_dir: Path, image_id: int, path: str, kind: str, mtime_ns: int) -> bytes:
    """The WebP ``kind`` (``thumb`` or ``preview``) of image ``image_id``, whose file is
    ``path``: from the cache, else made and cached (a cache that cannot be written is
    skipped: the picture is still answered)."""
    px = SIZES[kind]
    folder = data_dir / THUMBS_DIR / f"{image_id % 256:02x}"
    cached = folder / f"{image_id}-{px}-{mtime_ns}.webp"
    try:
        return cached.read_bytes()
    except OSError:
        pass
    made = make(path, px)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fsafe.atomic_write(cached, lambda fh: fh.write(made))
    except OSError:
        pass
    return made


def make(path: str, px: int) -> bytes:
    """The picture at ``path``, upright, fit in ``px`` x ``px``, as WebP."""
    from imgindex.decode import open_upright
    from imgindex.errors import DecodeFailure

    try:
        if os.path.getsize(path) > MAX_SOURCE_BYTES:
            raise NoPicture(f"{path}: too large to show")
        with open(path, "rb") as fh:
            data = fh.read()
        img = open_upright(data, min_size=px)
    except (OSError, DecodeFailure) as exc:
        raise NoPicture(str(exc)) from None
    img.thumbnail((px, px))
    out = io.BytesIO()
    img.save(out, "WEBP", quality=QUALITY, method=4)
    return out.getvalue()
