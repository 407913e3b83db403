"""torchvision classification models as embedders.

Each model is split into a body (pixels -> pooled features, the embedding) and a head
(features -> ImageNet logits) by cutting its classifier at a fixed place. Inputs use ImageNet
mean/std on [0, 1]. Weights: torchvision's default weights file, downloaded once into the
cache directory (see ``weights.py``), or a local ``weights=`` file (no network then).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from imgindex.errors import UnknownModel
from imgindex.models.runtime import TorchEmbedder, load_weights, pick_device
from imgindex.models.spec import ModelSpec
from imgindex.models.weights import cached_download

# name -> (attribute holding the classifier, index where the head starts; None = all of it)
_CUTS: dict[str, tuple[str, int | None]] = {
    "resnet50": ("fc", None),  # avgpool + flatten -> 2048
    "mobilenet_v2": ("classifier", None),  # pooled -> 1280
    "efficientnet_b0": ("classifier", None),  # pooled -> 1280
    "convnext_tiny": ("classifier", 2),  # pooled, LayerNorm2d, flatten -> 768
    "vgg16": ("classifier", 5),  # fc6, relu, dropout, fc7, relu -> 4096
}
_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))  # on the 0..255 scale
_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))


def weights_url(name: str) -> str:
    """Canonical URL of torchvision's default weights for NAME (its name carries the hash)."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT.url


def split(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """Cut MODEL into (body, head); body(x) is the pooled embedding, head(body(x)) the logits."""
    attr, start = _CUTS[name]
    classifier = getattr(model, attr)
    if start is None:
        setattr(model, attr, nn.Identity())
        return model, classifier
    setattr(model, attr, classifier[:start])
    return model, classifier[start:]


def load_zoo(
    spec: ModelSpec, *, weights: Path | None, cache_dir: Path, device: str | None, progress: bool
) -> TorchEmbedder:
    """torchvision model SPEC.name with WEIGHTS, else its default weights via CACHE_DIR."""
    if spec.name not in _CUTS:
        raise UnknownModel(f"model {spec.name} is not a torchvision model")
    import torchvision

    device = pick_device(device)
    path = (
        Path(weights)
        if weights
        else cached_download(weights_url(spec.name), cache_dir, progress=progress)
    )
    model = torchvision.models.get_model(spec.name, weights=None)
    load_weights(model, path, spec.name)
    body, head = split(model, spec.name)
    return TorchEmbedder(spec, body, head, mean=_MEAN, std=_STD, device=device)
