"""``imgindex similar``: a stored vector when the photo is indexed (no torch), else embed it."""

from __future__ import annotations

from pathlib import Path

from imgindex.errors import DecodeFailure, ImgIndexError
from imgindex.library import Library, Match


def similar_to(
    lib: Library, photo: Path, *, k: int = 10, weights: Path | None = None
) -> list[Match]:
    """The ``k`` nearest images to ``photo``, which need not be in the library."""
    path = photo.expanduser().absolute()
    if not path.is_file():
        raise ImgIndexError(f"{photo}: no such file")
    if k < 1:
        raise ImgIndexError(f"-k {k}: expected at least 1")
    stored = lib.stored_vector(path) or lib.stored_vector(path.resolve())
    if stored is not None:
        own_id, vector = stored
        return lib.search(vector, k, exclude=own_id)
    return lib.search(embed_file(lib, path, weights), k)


def embed_file(lib: Library, path: Path, weights: Path | None = None):
    """Decode and embed one file with the library's model."""
    from imgindex.decode import decode_for_model
    from imgindex.models import get_spec, load_embedder

    try:
        img = decode_for_model(path.read_bytes(), size=get_spec(lib.model).input_size)
    except DecodeFailure as exc:
        raise ImgIndexError(f"{path}: {exc.reason}") from None
    except OSError as exc:
        raise ImgIndexError(f"{path}: cannot read ({exc.strerror})") from None
    embedder = load_embedder(lib.model, weights=weights, cache_dir=lib.paths.weights)
    return embedder.embed(img.pixels[None])[0]
