"""Test images drawn on the fly: families of pictures that a colour-layout embedder separates."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

PALETTES = {
    "red": ((200, 30, 30), (250, 200, 40)),
    "blue": ((20, 40, 200), (40, 220, 200)),
    "green": ((30, 160, 40), (120, 60, 20)),
}


def draw(family: str, seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A picture of ``family``: its background colour with a few random shapes."""
    rng = random.Random(f"{family}-{seed}")
    bg, fg = PALETTES[family]
    img = Image.new("RGB", size, bg)
    pen = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        w, h = rng.randrange(20, size[0] // 3), rng.randrange(20, size[1] // 3)
        pen.ellipse((x, y, x + w, y + h), fill=fg)
    return img


def make_photos(
    folder: Path, family: str, count: int, start: int = 0, fmt: str = "JPEG"
) -> list[Path]:
    """Save ``count`` pictures of ``family`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    paths = []
    for i in range(start, start + count):
        path = folder / f"{family}_{i:03d}.{ext}"
        draw(family, i).save(path, fmt)
        paths.append(path)
    return paths
