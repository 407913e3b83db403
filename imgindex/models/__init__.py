"""Registry of embedding models and the loader.

This module must stay cheap: it never imports torch or torchvision (query paths import it to
learn a model's dimension). ``load_embedder`` imports the torch-backed modules lazily; the
``thumbnail`` model needs no torch at all. ``ModelSpec`` and ``Embedder`` are defined in
``imgindex.models.spec``, which the implementations import (they never import this module).
"""

from __future__ import annotations

from pathlib import Path

from imgindex.errors import UnknownModel
from imgindex.models.spec import Embedder, EmbeddingPostponed, ModelSpec

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbeddingPostponed",
    "ModelSpec",
    "available_models",
    "get_spec",
    "imagenet_label",
    "load_embedder",
]


DEFAULT_MODEL = "efficientnet_lite0"

_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "efficientnet_lite0",
        1280,
        224,
        "EfficientNet-Lite0 (ImageNet), pooled last feature map; weights ship with pip",
    ),
    ModelSpec("mobilenet_v2", 1280, 224, "torchvision MobileNetV2 (ImageNet), pooled features"),
    ModelSpec("efficientnet_b0", 1280, 224, "torchvision EfficientNet-B0 (ImageNet), pooled"),
    ModelSpec("resnet50", 2048, 224, "torchvision ResNet-50 (ImageNet), pooled features"),
    ModelSpec("convnext_tiny", 768, 224, "torchvision ConvNeXt-Tiny (ImageNet), pooled + norm"),
    ModelSpec("vgg16", 4096, 224, "torchvision VGG-16 (ImageNet), penultimate fc (fc7)"),
    ModelSpec(
        "thumbnail",
        192,
        224,
        "diagnostic: 8x8 RGB colour layout, mean-centred; no torch, no weights, no semantics",
    ),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}


def available_models() -> list[ModelSpec]:
    """Every registered model, the default first."""
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The spec of NAME (case and ``-``/``_`` insensitive); raises UnknownModel."""
    spec = _BY_NAME.get(name.strip().lower().replace("-", "_"))
    if spec is None:
        choices = ", ".join(s.name for s in _SPECS)
        raise UnknownModel(f"unknown model {name!r}; choose one of: {choices}")
    return spec


def load_embedder(
    name: str = DEFAULT_MODEL,
    *,
    weights: Path | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Embedder:
    """Load model NAME ready to embed.

    ``weights``: a local state-dict file to use instead of the default weights (no network).
    ``cache_dir``: where downloaded torchvision weights are kept (default: the data
    directory's ``weights/``). ``device``: "cpu" or "cuda"; None picks CUDA when available.
    ``progress``: show a download progress bar on stderr.
    """
    spec = get_spec(name)
    if spec.name == "thumbnail":
        from imgindex.models.thumbnail import ThumbnailEmbedder

        return ThumbnailEmbedder(spec)
    if spec.name == "efficientnet_lite0":
        from imgindex.models.efficientnet import load_lite0

        return load_lite0(spec, weights=weights, device=device)
    from imgindex.models.zoo import load_zoo

    if cache_dir is None:
        from imgindex.paths import WEIGHTS_DIR, resolve_data_dir

        cache_dir = resolve_data_dir() / WEIGHTS_DIR
    return load_zoo(
        spec, weights=weights, cache_dir=Path(cache_dir), device=device, progress=progress
    )


def imagenet_label(index: int) -> str:
    """Human-readable name of ImageNet-1k class INDEX (0..999), e.g. 281 -> "tabby"."""
    from imgindex.models._imagenet_classes import IMAGENET_CLASSES

    if not 0 <= index < len(IMAGENET_CLASSES):
        raise IndexError(f"ImageNet class index {index} is outside 0..999")
    return IMAGENET_CLASSES[index]
