"""Perceptual hashes: a 64-bit DCT hash (pHash, as ``imagehash.phash`` computes it) of the
picture the model sees, stored per image so that near-duplicates (resized, recompressed,
re-encoded, grey copies) are found by Hamming distance without decoding anything again."""

from __future__ import annotations

import numpy as np
from scipy.fft import dct


def phash_grey(grey: np.ndarray) -> int:
    """The hash of a 32 x 32 grey picture (float array), as a signed 64-bit integer (SQLite's)."""
    coeffs = dct(dct(grey, axis=0, norm="ortho"), axis=1, norm="ortho")[:8, :8]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value
