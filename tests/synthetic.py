"""A generated folder dataset whose masks are a function of pixel colour, so a model can learn it.

Each image is a noisy grey background with a few flat-coloured rectangles and ellipses; the class of
a pixel is the colour family it was painted with (0 background, 1 red, 2 green, 3 blue). A 1x1
convolution could in principle solve it, so a few seconds of training beat chance clearly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["background", "red", "green", "blue"]
PALETTE = [[0, 0, 0], [220, 30, 30], [30, 200, 30], [40, 60, 230]]
BASE_COLOURS = [(128, 128, 128), (200, 40, 40), (40, 180, 40), (40, 60, 210)]


def generate_sample(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One (image RGB uint8 (H, W, 3), mask uint8 (H, W)) pair."""
    mask_image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_image)
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(1, len(CLASSES)))
        x0, y0 = rng.integers(0, size - 12, size=2)
        w, h = rng.integers(10, size // 2, size=2)
        box = [int(x0), int(y0), int(min(size - 1, x0 + w)), int(min(size - 1, y0 + h))]
        if rng.random() < 0.5:
            draw.rectangle(box, fill=cls)
        else:
            draw.ellipse(box, fill=cls)
    mask = np.array(mask_image, dtype=np.uint8)
    colours = np.array(BASE_COLOURS, dtype=np.int16)[mask]
    noise = rng.integers(-20, 21, size=colours.shape)
    image = np.clip(colours + noise, 0, 255).astype(np.uint8)
    return image, mask


def write_dataset(root: Path, n_labeled: int = 8, n_unlabeled: int = 16, n_val: int = 8,
                  size: int = 64, seed: int = 0) -> Path:
    """Write a folder dataset (images/, masks/, classes.json, labeled/unlabeled/val.txt) under root."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    splits = {"labeled": n_labeled, "unlabeled": n_unlabeled, "val": n_val}
    for split, count in splits.items():
        ids = [f"{split}_{i:03d}" for i in range(count)]
        for image_id in ids:
            image, mask = generate_sample(rng, size)
            Image.fromarray(image).save(root / "images" / f"{image_id}.png")
            mask_png = Image.fromarray(mask, mode="P")
            mask_png.putpalette([c for rgb in PALETTE for c in rgb])
            mask_png.save(root / "masks" / f"{image_id}.png")
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "palette": PALETTE, "ignore_index": 255}))
    return root
