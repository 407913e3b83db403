"""Perceptual hashes: a 64-bit DCT hash (pHash, as ``imagehash.phash`` computes it) of the
picture the model sees, stored per image so that near-duplicates (resized, recompressed,
re-encoded, grey copies) are found by Hamming distance without decoding anything again."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dct

BITS = 64


def phash(pixels: np.ndarray) -> int:
    """The hash of uint8 RGB ``pixels`` (H, W, 3) as a signed 64-bit integer (SQLite's)."""
    grey = Image.fromarray(pixels).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    return phash_grey(np.asarray(grey, dtype=np.float64))


def phash_grey(grey: np.ndarray) -> int:
    """The hash of a 32 x 32 grey picture (float array)."""
    coeffs = dct(dct(grey, axis=0, norm="ortho"), axis=1, norm="ortho")[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value


def distances(hashes: np.ndarray, h: int) -> np.ndarray:
    """Hamming distance from ``h`` to each of ``hashes`` (int64 array of stored hashes)."""
    x = np.bitwise_xor(np.asarray(hashes, np.int64), np.int64(h)).view(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
