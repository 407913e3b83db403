"""The embedding service's wire format, shared by its server (``imgindex.embedserver``) and its
client (``imgindex.embedclient``). Neither torch nor an HTTP stack is imported here.

One request embeds one batch of images the client already decoded and scaled to the model's
input size (``S`` x ``S`` RGB):

    POST /v1/embed
    X-Imgindex-Model: efficientnet_lite0      the library's model; another one is refused (409)
    X-Imgindex-Format: raw | jpeg
    X-Imgindex-Count: N
    Authorization: Bearer TOKEN               when the server has a token
    body, raw:  N * S * S * 3 bytes of uint8 RGB, row-major (the decoder's output as it is)
    body, jpeg: N times [4-byte big-endian length, that many bytes of an S x S baseline JPEG]

    -> 200 {"model", "dim", "device", "count", "vectors": base64 of N x dim float32
            little-endian unit vectors, "labels": [ImageNet top-1 class per image] or null}
    -> 4xx/5xx {"detail": "why"}

    GET /v1/info -> {"model", "dim", "input_size", "device", "max_batch", "formats"}

``raw`` is what clients send (see bench/embed_service.py): lossless, so vectors agree exactly
with a local run, and nothing to encode on a weak NAS CPU; ``jpeg`` sends ~8x fewer bytes for
slow links, at a cost in CPU on both sides and a cosine of ~0.99x to the local vector.
"""

from __future__ import annotations

import base64
import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

EMBED_PATH = "/v1/embed"
INFO_PATH = "/v1/info"
MODEL_HEADER = "X-Imgindex-Model"
FORMAT_HEADER = "X-Imgindex-Format"
COUNT_HEADER = "X-Imgindex-Count"
FORMATS = ("raw", "jpeg")
TOKEN_ENV = "IMGINDEX_EMBED_TOKEN"
DEFAULT_PORT = 8765
MAX_BATCH = 256  # images per request, at most (the server may be started with fewer)
_LENGTH = struct.Struct(">I")


class WireError(ValueError):
    """A request or an answer that does not follow the format; the message says how."""


@dataclass(frozen=True)
class Answer:
    """What the service gives back for one batch."""

    model: str
    dim: int
    device: str
    vectors: np.ndarray  # float32 (N, dim), unit rows
    labels: list[int] | None  # ImageNet top-1 class per image; None: the model has no head


def max_body(count: int, size: int, fmt: str) -> int:
    """The largest body a batch of ``count`` images of side ``size`` may have in ``fmt`` (a
    JPEG is allowed the raw size plus headers: one larger is not a 224-px picture)."""
    per_image = size * size * 3 + (_LENGTH.size + 64 * 1024 if fmt == "jpeg" else 0)
    return count * per_image


def encode_batch(pixels: np.ndarray, fmt: str = "raw", quality: int = 90) -> bytes:
    """The request body for uint8 ``(N, S, S, 3)`` pixels."""
    if fmt == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    if fmt != "jpeg":
        raise WireError(f"unknown payload format {fmt!r}; expected one of {', '.join(FORMATS)}")
    from PIL import Image

    out = io.BytesIO()
    for image in pixels:
        one = io.BytesIO()
        Image.fromarray(image).save(one, "JPEG", quality=quality)
        out.write(_LENGTH.pack(one.tell()))
        out.write(one.getvalue())
    return out.getvalue()


def decode_batch(body: bytes, fmt: str, count: int, size: int) -> np.ndarray:
    """uint8 ``(count, size, size, 3)`` pixels from a request body; WireError when the body
    is not ``count`` images of that size in ``fmt``."""
    if fmt == "raw":
        want = count * size * size * 3
        if len(body) != want:
            raise WireError(
                f"a raw batch of {count} images of {size}x{size} is {want} bytes, not {len(body)}"
            )
        return np.frombuffer(body, dtype=np.uint8).reshape(count, size, size, 3).copy()
    if fmt != "jpeg":
        raise WireError(f"unknown payload format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    view, pos = memoryview(body), 0
    for i in range(count):
        if pos + _LENGTH.size > len(body):
            raise WireError(f"the body ends before image {i + 1} of {count}")
        (length,) = _LENGTH.unpack_from(body, pos)
        pos += _LENGTH.size
        if length > len(body) - pos:
            raise WireError(f"image {i + 1} claims {length} bytes; fewer are left")
        out[i] = _jpeg(view[pos : pos + length], size, i)
        pos += length
    if pos != len(body):
        raise WireError(f"{len(body) - pos} bytes follow the last of {count} images")
    return out


def _jpeg(data: memoryview, size: int, i: int) -> np.ndarray:
    """One JPEG of exactly ``size`` x ``size`` (checked before its pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            if img.size != (size, size):
                raise WireError(f"image {i + 1} is {img.size[0]}x{img.size[1]}, not {size}x{size}")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"image {i + 1} is not a readable JPEG: {exc}") from None


def encode_answer(
    model: str, device: str, vectors: np.ndarray, labels: np.ndarray | None
) -> dict[str, Any]:
    """The JSON answer for one batch."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    return {
        "model": model,
        "dim": int(vectors.shape[1]),
        "device": device,
        "count": int(vectors.shape[0]),
        "vectors": base64.b64encode(vectors.tobytes()).decode("ascii"),
        "labels": None if labels is None else [int(x) for x in labels],
    }


def decode_answer(data: Any, model: str, count: int, dim: int) -> Answer:
    """The service's answer, checked against what was asked: ``count`` finite unit vectors of
    ``model`` (``dim``-d) and, when there are labels, one ImageNet class per image."""
    if not isinstance(data, dict):
        raise WireError("the answer is not a JSON object")
    if data.get("model") != model or data.get("dim") != dim or data.get("count") != count:
        raise WireError(
            f"asked for {count} {dim}-d vectors of {model}, got {data.get('count')!r} "
            f"{data.get('dim')!r}-d ones of {data.get('model')!r}"
        )
    try:
        raw = base64.b64decode(data["vectors"], validate=True)
        vectors = np.frombuffer(raw, dtype="<f4").reshape(count, dim).astype(np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"the answer's vectors cannot be read: {exc}") from None
    norms = np.linalg.norm(vectors, axis=1)
    if not np.isfinite(vectors).all() or not np.allclose(norms, 1.0, atol=1e-3):
        raise WireError("the answer's vectors are not finite unit vectors")
    labels = data.get("labels")
    if labels is not None and (
        not isinstance(labels, list)
        or len(labels) != count
        or not all(isinstance(x, int) and 0 <= x < 1000 for x in labels)
    ):
        raise WireError("the answer's labels are not one ImageNet class per image")
    return Answer(model, dim, str(data.get("device", "?")), vectors, labels)
