"""``imgindex similar``: a stored vector when the photo is indexed (no torch); else the running
daemon embeds it (model already loaded; asked through ``imgindex.client``); else embed it here."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from imgindex.client import ask_similar
from imgindex.errors import DecodeFailure, ImgIndexError
from imgindex.library import Library, Match

if TYPE_CHECKING:
    import numpy as np

    from imgindex.decode import Decoded


def similar_to(
    lib: Library, photo: Path, *, k: int = 10, weights: Path | None = None
) -> list[Match]:
    """The ``k`` nearest images to ``photo``, which need not be in the library."""
    path = photo.expanduser().absolute()
    check_regular_file(photo, path)
    if k < 1:
        raise ImgIndexError(f"-k {k}: expected at least 1")
    found = lib.search_stored([path, path.resolve()], k)
    if found is not None:
        return found
    if weights is None:  # the daemon uses its own weights: not when the user names a file
        answer = ask_similar(lib.paths, path, k)
        if answer is not None:
            return answer
    return lib.search(embed_file(lib, path, weights), k)


def check_regular_file(photo: Path, path: Path) -> None:
    """Refuse what is not a regular file before opening it (a FIFO would block the read,
    ``/dev/zero`` never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImgIndexError(f"{photo}: no such file") from None
    except OSError as exc:
        raise ImgIndexError(f"{photo}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ImgIndexError(f"{photo}: is a directory, not a photo")
    if not stat.S_ISREG(mode):
        raise ImgIndexError(f"{photo}: not a regular file")


def embed_file(lib: Library, path: Path, weights: Path | None = None) -> np.ndarray:
    """Decode and embed one file with the library's model."""
    from imgindex.models import load_embedder

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImgIndexError(f"{path}: cannot read ({exc.strerror})") from None
    img = decode_photo(path, data, lib.model)
    embedder = load_embedder(lib.model, weights=weights, cache_dir=lib.paths.weights)
    return embedder.embed(img.pixels[None])[0]


def decode_photo(path: Path | str, data: bytes, model: str) -> Decoded:
    """``data`` (the bytes of ``path``) decoded for ``model``; ImgIndexError says why not."""
    from imgindex.decode import decode_for_model
    from imgindex.models import get_spec

    try:
        return decode_for_model(data, size=get_spec(model).input_size)
    except DecodeFailure as exc:
        raise ImgIndexError(f"{path}: {exc.reason}") from None
