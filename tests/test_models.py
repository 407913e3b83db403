"""Embedding models: the registry, the default CNN on real pets, thumbnail, torchvision zoo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, corpus

from imgindex.errors import ImgIndexError, UnknownModel, WeightsUnavailable
from imgindex.models import (
    DEFAULT_MODEL,
    available_models,
    get_spec,
    imagenet_label,
    load_embedder,
)

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
DOGS = range(151, 269)  # ImageNet: Chihuahua .. Mexican hairless


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run CODE in a fresh interpreter at the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _square(path: Path, size: int = 224) -> np.ndarray:
    """RGB, short side resized to SIZE, centre crop SIZE x SIZE, as uint8 HWC."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))))
        left, top = (img.width - size) // 2, (img.height - size) // 2
        return np.asarray(img.crop((left, top, left + size, top + size)))


@pytest.fixture(scope="module")
def pets() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, pixels (24, 224, 224, 3), is_dog) of the pets corpus."""
    root = corpus("pets")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    assert len(files) == 24
    is_dog = np.array([p.stem.endswith("_dog") for p in files])
    return [p.name for p in files], np.stack([_square(p) for p in files]), is_dog


@pytest.fixture(scope="module")
def lite0():
    return load_embedder(device="cpu")


# --- registry ---------------------------------------------------------------------------


def test_registry_lists_default_first_and_known_dims() -> None:
    specs = available_models()
    assert specs[0].name == DEFAULT_MODEL == "efficientnet_lite0"
    dims = {s.name: s.dim for s in specs}
    assert dims == {
        "efficientnet_lite0": 1280,
        "mobilenet_v2": 1280,
        "efficientnet_b0": 1280,
        "resnet50": 2048,
        "convnext_tiny": 768,
        "vgg16": 4096,
        "thumbnail": 192,
    }
    assert all(s.input_size == 224 and s.description for s in specs)
    assert get_spec("EfficientNet-Lite0") is get_spec("efficientnet_lite0")


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UnknownModel) as err:
        get_spec("alexnet")
    msg = str(err.value)
    assert msg.startswith("unknown model 'alexnet'; choose one of: efficientnet_lite0, ")
    assert all(s.name in msg for s in available_models())
    with pytest.raises(UnknownModel):
        load_embedder("alexnet")


def test_import_does_not_load_torch() -> None:
    done = _python(
        "import imgindex.models, sys\n"
        "imgindex.models.get_spec('resnet50'); imgindex.models.imagenet_label(1)\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules"
    )
    assert done.returncode == 0, done.stderr


def test_imagenet_labels() -> None:
    assert imagenet_label(0) == "tench"
    assert imagenet_label(281) == "tabby"
    assert imagenet_label(999) == "toilet tissue"
    with pytest.raises(IndexError):
        imagenet_label(1000)


# --- the default model on real photos -----------------------------------------------------


@pytest.mark.slow  # the real default model on the real corpus
def test_default_model_labels_every_pet(lite0, pets) -> None:
    names, pixels, is_dog = pets
    labels = lite0.classify(pixels).argmax(axis=1)
    wrong = [
        f"{n}: {imagenet_label(c)} ({c})"
        for n, c, dog in zip(names, labels, is_dog, strict=True)
        if c not in (DOGS if dog else CATS)
    ]
    assert not wrong, wrong


@pytest.mark.slow  # the real default model on the real corpus
def test_default_embeddings_unit_norm_and_cats_near_cats(lite0, pets) -> None:
    _, pixels, is_dog = pets
    emb = lite0.embed(pixels)
    assert emb.shape == (24, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(lite0.embed(pixels[:3]), emb[:3], atol=1e-5)  # batch-independent
    sim = emb @ emb.T
    cats, dogs = ~is_dog, is_dog
    cat_cat = sim[np.ix_(cats, cats)][~np.eye(cats.sum(), dtype=bool)].mean()
    cat_dog = sim[np.ix_(cats, dogs)].mean()
    assert cat_cat > cat_dog + 0.05, (cat_cat, cat_dog)


@pytest.mark.slow  # the real default model
def test_default_model_prints_nothing_to_stdout(capfd) -> None:
    emb = load_embedder(device="cpu", progress=True)
    emb.classify(np.zeros((1, 224, 224, 3), np.uint8))
    assert capfd.readouterr().out == ""


@pytest.mark.slow  # the real default model
def test_bad_pixels_and_empty_batch(lite0) -> None:
    assert lite0.embed(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)
    with pytest.raises(ValueError, match="uint8"):
        lite0.embed(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="224"):
        lite0.embed(np.zeros((1, 100, 100, 3), np.uint8))


def test_default_model_rejects_foreign_weights(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(WeightsUnavailable, match="cannot read weights file"):
        load_embedder(weights=tmp_path / "junk.pth")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_embedder(weights=tmp_path / "missing.pth")


def test_unusable_device_is_refused() -> None:
    with pytest.raises(ImgIndexError, match="device"):
        load_embedder(device="tpu")


# --- thumbnail: the torch-free model ------------------------------------------------------


def test_thumbnail_needs_no_torch() -> None:
    done = _python(
        "import sys, numpy as np\n"
        "from imgindex.models import load_embedder\n"
        "e = load_embedder('thumbnail')\n"
        "x = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)\n"
        "v = e.embed(x)\n"
        "assert v.shape == (3, 192) and v.dtype == np.float32, v.shape\n"
        "assert e.classify(x).shape == (3, 1000)\n"
        "assert 'torch' not in sys.modules"
    )
    assert done.returncode == 0, done.stderr


def test_thumbnail_is_a_colour_layout() -> None:
    emb = load_embedder("thumbnail")
    assert emb.device == "cpu" and emb.spec.dim == 192
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    flat = np.full((224, 224, 3), 90, np.uint8)
    batch = np.stack([base, noisy, other, flat, flat + 50])
    v = emb.embed(batch)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, emb.embed(batch))  # deterministic
    assert v[0] @ v[1] > 0.9 > v[0] @ v[2]
    assert v[3] @ v[4] == pytest.approx(1.0) and abs(v[0] @ v[3]) < 1e-5
    logits = emb.classify(batch)
    assert logits.shape == (5, 1000) and not logits.any()
    # sizes other than 224 work too, by area averaging
    assert emb.embed(np.zeros((1, 50, 50, 3), np.uint8)).shape == (1, 192)


# --- torchvision zoo, from local weights files (no network) ------------------------------


@pytest.fixture
def no_network(monkeypatch) -> None:
    """Point any download at a closed loopback port so a stray one fails fast."""
    monkeypatch.setenv("IMGINDEX_WEIGHTS_MIRROR", "http://127.0.0.1:9/")


@pytest.mark.slow  # real torchvision models
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_zoo_model_from_local_weights(name, tmp_path, no_network) -> None:
    import torch
    import torchvision

    file = tmp_path / f"{name}-random.pth"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), file)
    emb = load_embedder(name, weights=file, cache_dir=tmp_path / "cache", device="cpu")
    assert emb.device == "cpu" and emb.spec.name == name
    pixels = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    vec = emb.embed(pixels)
    assert vec.shape == (2, get_spec(name).dim) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    logits = emb.classify(pixels)
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert not (tmp_path / "cache").exists()  # nothing downloaded


@pytest.mark.slow  # builds two torchvision models (~10 s)
def test_zoo_refuses_weights_of_another_model(tmp_path, no_network) -> None:
    import torch
    import torchvision

    file = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.get_model("mobilenet_v2", weights=None).state_dict(), file)
    with pytest.raises(WeightsUnavailable, match="does not fit model resnet50"):
        load_embedder("resnet50", weights=file, device="cpu")


@pytest.mark.parametrize("name", ["convnext_tiny", "efficientnet_b0", "vgg16"])
def test_zoo_split_gives_spec_dim(name) -> None:
    """Body and head of the remaining models, on random init (no weights file needed)."""
    import torch
    import torchvision

    from imgindex.models.zoo import split

    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = torchvision.models.get_model(name, weights=None)
    body, head = split(model.eval(), name)
    feats = body(torch.empty(2, 3, 224, 224, device="meta"))
    assert tuple(feats.shape) == (2, get_spec(name).dim)
    assert tuple(head(feats).shape) == (2, 1000)


@pytest.mark.slow  # the real default model on the real corpus
def test_cuda_matches_cpu(lite0, pets) -> None:
    """Half precision on the GPU agrees with float32 on the CPU (runs only where CUDA is)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    gpu = load_embedder(device="cuda")
    assert gpu.device == "cuda"
    _, pixels, _ = pets
    on_gpu, on_cpu = gpu.embed(pixels), lite0.embed(pixels)
    assert on_gpu.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(on_gpu, axis=1), 1.0, atol=1e-5)
    assert (on_gpu * on_cpu).sum(axis=1).min() > 0.99
    assert (gpu.classify(pixels).argmax(1) == lite0.classify(pixels).argmax(1)).mean() > 0.9


@pytest.mark.slow  # the real default model
def test_folding_batch_norm_and_padding_keeps_lite0_features() -> None:
    """The default model runs with batch norms folded into its convolutions and symmetric
    "same" padding done by the convolutions: all are folded, the features are unchanged."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from imgindex.models.efficientnet import default_weights, fold_batchnorm, fold_padding
    from imgindex.models.runtime import load_weights

    net = EfficientNet.from_name("efficientnet-lite0")
    load_weights(net, default_weights(), "efficientnet_lite0")
    net.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = net.extract_features(x).mean(dim=(2, 3))
        assert fold_batchnorm(net) == 49 and fold_padding(net) == 12
        after = net.extract_features(x).mean(dim=(2, 3))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
