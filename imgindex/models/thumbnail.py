"""``thumbnail``: a deterministic colour-layout descriptor that needs neither torch nor weights.

The image is area-averaged down to 8x8 RGB (192 values), mean-centred and L2-normalised. It
knows nothing about content, only where colours sit: a diagnostic model and the fast tests'
stand-in for a CNN. A flat image (nothing left after centring) maps to the constant unit
vector, so flat images match each other and are orthogonal to every other image.
"""

from __future__ import annotations

import numpy as np

from imgindex.models.spec import ModelSpec

GRID = 8


def _area_mean(pixels: np.ndarray, axis: int) -> np.ndarray:
    """Average PIXELS along AXIS into GRID nearly equal bins."""
    n = pixels.shape[axis]
    starts = np.arange(GRID) * n // GRID
    sums = np.add.reduceat(pixels, starts, axis=axis)
    counts = np.diff(np.append(starts, n)).astype(np.float64)
    shape = [1] * pixels.ndim
    shape[axis] = GRID
    return sums / counts.reshape(shape)


class ThumbnailEmbedder:
    """Embedder for the ``thumbnail`` spec; always runs on the CPU with numpy."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device = "cpu"

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 4 or pixels.shape[3] != 3 or min(pixels.shape[1:3], default=0) < GRID:
            raise ValueError(
                f"thumbnail wants (N, S, S, 3) pixels with S >= {GRID}, got {pixels.shape}"
            )
        small = _area_mean(_area_mean(pixels.astype(np.float64), 1), 2)  # (N, 8, 8, 3)
        vec = small.reshape(len(pixels), -1)
        vec -= vec.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(vec, axis=1, keepdims=True)
        flat = norm[:, 0] < 1e-6
        vec[flat] = 1.0
        norm[flat] = np.sqrt(vec.shape[1])
        return (vec / norm).astype(np.float32)

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        """No classifier head: zeros (N, 1000)."""
        return np.zeros((len(pixels), 1000), np.float32)
