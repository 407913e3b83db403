"""Running a torch backbone: device choice, input scaling, precision, output normalisation.

CPU: float32 under ``torch.inference_mode()``, channels_last. CUDA: the same under
``torch.autocast("cuda", dtype=torch.float16)``. Outputs are always float32 numpy.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgindex.errors import ImgIndexError, WeightsUnavailable
from imgindex.models.spec import ModelSpec


def pick_device(device: str | None) -> str:
    """DEVICE, or CUDA when available and DEVICE is None, else the CPU; refuses bad choices."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ImgIndexError(f"unknown device {device!r}; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ImgIndexError("device cuda was requested but torch sees no usable CUDA GPU")
    return device


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a saved state dict (tensors only: ``weights_only``); WeightsUnavailable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailable(f"weights file {path} does not exist") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise WeightsUnavailable(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"weights file {path} holds no state dict")
    return state


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load PATH into MODEL strictly; a file for another architecture is WeightsUnavailable."""
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())  # one line; key lists can be long
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise WeightsUnavailable(
            f"weights file {path} does not fit model {name}: {reason}"
        ) from None


CPU_CHUNK = 4  # measured, 2-core EPYC: 4 ~170 img/s, 8 ~130, 16+ ~50-80 (activations outgrow L3)


class TorchEmbedder:
    """An Embedder over ``body`` (pixels -> pooled features) and ``head`` (features -> logits)."""

    def __init__(
        self,
        spec: ModelSpec,
        body: nn.Module,
        head: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        device: str,
    ) -> None:
        self.spec = spec
        self.device = device
        # torch's stubs omit Module.to's memory_format keyword
        self.body = body.eval().to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.head = head.eval().to(device)
        # On the 0..255 scale, shaped to broadcast over NCHW.
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        feats = self._run(pixels, classify=False)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    def embed_labelled(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors and the ImageNet top-1 class of each image, from one forward pass."""
        self._check(pixels)
        vectors, labels = [np.zeros((0, self.spec.dim), np.float32)], [np.zeros(0, np.int64)]
        step = CPU_CHUNK if self.device == "cpu" else max(len(pixels), 1)
        with torch.inference_mode(), self._precision():
            for start in range(0, len(pixels), step):
                feats = self.body(self._input(pixels[start : start + step]))
                labels.append(self.head(feats).argmax(dim=1).cpu().numpy())
                vectors.append(feats.float().cpu().numpy())
        feats = np.concatenate(vectors)
        norms = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        return feats / norms, np.concatenate(labels)

    def _precision(self) -> Any:
        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels, classify=True)

    def _check(self, pixels: np.ndarray) -> None:
        s = self.spec.input_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
            raise ValueError(
                f"{self.spec.name} wants uint8 (N, {s}, {s}, 3) pixels, "
                f"got {pixels.dtype} {pixels.shape}"
            )

    def _input(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 NHWC numpy -> scaled float32 NCHW tensor in channels_last layout."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)  # uint8 travels
        x = x.permute(0, 3, 1, 2).float()  # NHWC strides = channels_last already
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def _run(self, pixels: np.ndarray, *, classify: bool) -> np.ndarray:
        self._check(pixels)
        out = [np.zeros((0, 1000 if classify else self.spec.dim), np.float32)]
        half = self._precision()
        step = CPU_CHUNK if self.device == "cpu" else max(len(pixels), 1)
        with torch.inference_mode(), half:
            for start in range(0, len(pixels), step):
                feats = self.body(self._input(pixels[start : start + step]))
                if classify:
                    feats = self.head(feats)
                out.append(feats.float().cpu().numpy())
        return np.concatenate(out)
