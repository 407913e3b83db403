"""What a model is (``ModelSpec``) and what a loaded one does (``Embedder``): the names the
model implementations share with the registry in ``imgindex.models``, which loads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    """What a caller needs to know about a model without loading it."""

    name: str  # e.g. "efficientnet_lite0"
    dim: int  # embedding dimension
    input_size: int  # square input side the model expects
    description: str


class Embedder(Protocol):
    """A loaded model. Inputs are uint8 (N, S, S, 3) RGB with S = ``spec.input_size``."""

    spec: ModelSpec
    device: str  # "cpu" or "cuda"

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, dim), each row L2-normalised (cosine similarity = inner product)."""
        ...

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, 1000) ImageNet logits from the model's classifier head."""
        ...


class EmbeddingPostponed(Exception):
    """An embedder has no vectors for this batch now (it stopped waiting for a remote service
    that is down): the caller commits nothing of the batch and tries it again later."""
