"""Weak and strong augmentation: image and mask stay aligned, masks stay nearest-neighbour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as F

from stpp.core.config import AugmentConfig
from stpp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cutout,
    StrongAugment,
    WeakAugment,
    normalize,
    to_eval_tensor,
)

# Far-apart flat colours, one per class: a pixel's class is the nearest colour.
COLOURS = np.array([(128, 128, 128), (230, 30, 30), (30, 210, 30), (30, 50, 230), (240, 230, 40)])


def scene(width: int = 96, height: int = 72, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """An asymmetric picture of flat-colour shapes and its mask (class = colour index)."""
    rng = np.random.default_rng(seed)
    mask_image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_image)
    # A fixed off-centre block keeps the scene asymmetric whatever the random shapes do.
    draw.rectangle([2, 2, width // 3, height // 2], fill=1)
    for _ in range(5):
        cls = int(rng.integers(1, len(COLOURS)))
        x0, y0 = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=cls)
    mask = np.array(mask_image, dtype=np.uint8)
    return Image.fromarray(COLOURS[mask].astype(np.uint8)), mask


def misaligned_pixels(image: torch.Tensor, mask: torch.Tensor) -> int:
    """Labelled pixels inside a uniform 3x3 mask neighbourhood whose colour says another class."""
    pixels = image.permute(1, 2, 0).numpy().astype(np.int32)
    colour_class = np.argmin(((pixels[:, :, None, :] - COLOURS[None, None]) ** 2).sum(-1), axis=-1)
    m = mask.numpy().astype(np.int32)
    padded = np.pad(m, 1, constant_values=-1)
    h, w = m.shape
    uniform = np.ones_like(m, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= padded[dy:dy + h, dx:dx + w] == m
    checked = uniform & (m != 255)
    return int((checked & (colour_class != m)).sum())


@pytest.mark.parametrize("base, crop, scale", [(96, 64, (0.5, 2.0)), (96, 48, (0.25, 0.5)),
                                               (48, 80, (1.0, 3.0)), (120, 100, (0.9, 1.1))])
def test_weak_keeps_image_and_mask_aligned(base, crop, scale):
    cfg = AugmentConfig(base_size=base, crop_size=crop, scale_min=scale[0], scale_max=scale[1])
    weak = WeakAugment(cfg)
    checked = 0
    for seed in range(40):
        image, mask = scene(seed=seed % 4)
        torch.manual_seed(seed)
        out_image, out_mask = weak(image, mask)
        assert misaligned_pixels(out_image, out_mask) == 0, f"seed {seed}"
        checked += int((out_mask != 255).sum())
    assert checked > 40 * crop * crop * 0.2


def _sabotaged(weak: WeakAugment, index: int, op) -> WeakAugment:
    weak.ops[index] = op
    return weak


def test_alignment_check_catches_misalignment():
    cfg = AugmentConfig(base_size=96, crop_size=64, scale_min=0.8, scale_max=1.2)
    image, mask = scene()
    image_only_flip = _sabotaged(WeakAugment(cfg), 3, lambda i, m: (F.horizontal_flip(i), m))
    mask_shift = _sabotaged(WeakAugment(cfg), 2, lambda i, m: (F.crop(i, 0, 0, 64, 64), F.crop(m, 0, 4, 64, 64)))
    for broken in (image_only_flip, mask_shift):
        torch.manual_seed(0)
        out_image, out_mask = broken(image, mask)
        assert misaligned_pixels(out_image, out_mask) > 50


def test_strong_geometry_free_ops_keep_alignment():
    cfg = AugmentConfig(base_size=96, crop_size=64)
    weak = WeakAugment(cfg)
    strong = StrongAugment(cfg, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, cutout_p=1.0)
    for seed in range(30):
        image, mask = scene(seed=seed % 4)
        torch.manual_seed(seed)
        weak_image, weak_mask = weak(image, mask)
        out_image, out_mask = strong(weak_image, weak_mask)
        assert misaligned_pixels(out_image, out_mask) == 0
        outside = out_mask != 255
        assert torch.equal(out_mask[outside], weak_mask[outside])
        assert torch.equal(out_image[:, outside], weak_image[:, outside])


def test_strong_colour_ops_never_touch_the_mask():
    cfg = AugmentConfig(base_size=96, crop_size=64, cutout=False)
    strong = StrongAugment(cfg, jitter_p=1.0, grayscale_p=0.5, blur_p=1.0)
    image, mask = scene()
    torch.manual_seed(0)
    weak_image, weak_mask = WeakAugment(cfg)(image, mask)
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = strong(weak_image, weak_mask)
        assert out_image.dtype == torch.uint8 and out_image.shape == weak_image.shape
        assert torch.equal(out_mask, weak_mask)
        changed += int(not torch.equal(out_image, weak_image))
    assert changed == 20


def _cutout_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(mask == 255, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def test_cutout_sets_ignore_exactly_inside_its_noise_box():
    size = 64
    cfg = AugmentConfig(base_size=size, crop_size=size)
    strong = StrongAugment(cfg, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, cutout_p=1.0)
    image = torch.full((3, size, size), 100, dtype=torch.uint8)
    mask = torch.ones((size, size), dtype=torch.uint8)
    areas, ratios, lefts = [], [], set()
    for seed in range(100):
        torch.manual_seed(seed)
        out_image, out_mask = strong(image, mask)
        top, left, bottom, right = _cutout_box(out_mask)
        box = torch.zeros_like(mask, dtype=torch.bool)
        box[top:bottom, left:right] = True
        assert torch.equal(out_mask == 255, box), "ignore region is not one filled box"
        assert torch.equal(out_mask[~box], mask[~box])
        assert bool((out_image[:, ~box] == 100).all()), "pixels outside the box changed"
        inside = out_image[:, box]
        assert float((inside == 100).all(0).float().mean()) < 0.05, "box pixels are not noise"
        if inside.shape[1] >= 20:
            grey = (inside[0] == inside[1]) & (inside[1] == inside[2])
            assert float(grey.float().mean()) < 0.05, "noise is not per channel"
        areas.append(box.sum().item() / size**2)
        ratios.append((bottom - top) / (right - left))
        lefts.add(left)
    assert 0.01 <= min(areas) and max(areas) <= 0.4
    assert min(ratios) < 0.6 and max(ratios) > 1.8
    assert len(lefts) > 10


def test_cutout_probability_and_switch():
    cfg = AugmentConfig(base_size=32, crop_size=32)
    image = torch.full((3, 32, 32), 100, dtype=torch.uint8)
    mask = torch.zeros((32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    default = StrongAugment(cfg)
    hits = sum(bool((default(image, mask)[1] == 255).any()) for _ in range(400))
    assert 150 < hits < 250
    off = StrongAugment(AugmentConfig(base_size=32, crop_size=32, cutout=False), cutout_p=1.0)
    assert not any(bool((off(image, mask)[1] == 255).any()) for _ in range(50))


def _official_cutout_areas(size: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Erased fractions of a ``size x size`` crop as the paper's code's cutout draws its boxes.

    ST-PlusPlus ``dataset/transform.py``: area ``U(0.02, 0.4) x H x W``, ratio ``U(0.3, 1/0.3)``,
    ``w = int(sqrt(area / ratio))``, ``h = int(sqrt(area * ratio))``, corner ``x, y`` any pixel, drawn
    again (all four) until ``x + w <= W`` and ``y + h <= H``. Vectorised: the accepted ones of many
    independent tries are independent draws of the accepted box.
    """
    areas: list[float] = []
    while len(areas) < draws:
        tries = 4 * draws
        area = rng.uniform(0.02, 0.4, tries) * size * size
        ratio = rng.uniform(0.3, 1 / 0.3, tries)
        w, h = np.sqrt(area / ratio).astype(int), np.sqrt(area * ratio).astype(int)
        x, y = rng.integers(0, size, tries), rng.integers(0, size, tries)
        fits = (x + w <= size) & (y + h <= size)
        areas += list((w * h / size**2)[fits])
    return np.array(areas[:draws])


def _cutout_areas(cutout: Cutout, size: int, draws: int) -> np.ndarray:
    boxes = [cutout.sample_box(size, size) for _ in range(draws)]
    return np.array([box_h * box_w / size**2 for _, _, box_h, box_w in boxes])


def test_cutout_erases_the_area_the_papers_code_erases():
    size = 321  # the paper's Pascal crop
    official = _official_cutout_areas(size, 200_000, np.random.default_rng(0))
    torch.manual_seed(0)
    ours = _cutout_areas(Cutout(), size, 3000)
    # 3000 draws of a fraction with std ~0.09: the mean's standard error is ~0.002.
    assert abs(ours.mean() - official.mean()) < 0.01
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(ours, q) - np.quantile(official, q)) < 0.02, q
    assert ours.max() <= 0.4
    clamped = _cutout_areas(Cutout(redraw=False), size, 3000)
    assert clamped.mean() > official.mean() + 0.04, "the clamping rule should erase clearly more"


def test_cutout_redraw_follows_the_config():
    assert StrongAugment(AugmentConfig()).cutout.redraw
    assert not StrongAugment(AugmentConfig(cutout_redraw=False)).cutout.redraw


@pytest.mark.parametrize("width, height", [(240, 180), (40, 30), (128, 128), (30, 90)])
def test_weak_output_sizes_and_types(width, height):
    cfg = AugmentConfig(base_size=max(width, height), crop_size=64)
    image, mask = scene(width, height)
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = WeakAugment(cfg)(image, mask)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.uint8
        assert out_mask.shape == (64, 64) and out_mask.dtype == torch.uint8
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor


def test_weak_pads_image_with_zero_and_mask_with_ignore():
    cfg = AugmentConfig(base_size=40, crop_size=96)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(10, 256, (30, 40, 3), dtype=np.uint8))
    mask = rng.integers(0, 4, (30, 40), dtype=np.uint8)
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = WeakAugment(cfg)(image, mask)
        padded = out_mask == 255
        assert padded.any()
        assert bool((out_image[:, padded] == 0).all())
        assert bool((out_image[:, ~padded].amax(0) > 0).all())


def test_weak_scale_range_and_flip_are_respected():
    # Crop 96 exceeds the largest scaled image (80 wide): the unpadded area is the scaled image.
    cfg = AugmentConfig(base_size=40, crop_size=96, scale_min=0.5, scale_max=2.0)
    image = Image.new("RGB", (40, 30), (50, 60, 70))
    mask = np.zeros((30, 40), dtype=np.uint8)
    longs, flips = [], 0
    for seed in range(300):
        torch.manual_seed(seed)
        _, out_mask = WeakAugment(cfg)(image, mask)
        rows, cols = torch.nonzero(out_mask != 255, as_tuple=True)
        height, width = int(rows.max()) + 1, int(cols.max() - cols.min()) + 1
        assert int(rows.min()) == 0
        assert height == int(30 * width / 40 + 0.5), "aspect ratio not kept"
        longs.append(width)
        flips += int(cols.max()) == 95
    assert 20 <= min(longs) <= 23 and 77 <= max(longs) <= 80
    assert abs(np.mean(longs) - 50) < 3
    assert 110 < flips < 190


def test_weak_mask_keeps_only_original_values():
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(50, 70))
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for base, crop in [(70, 64), (35, 48), (140, 64), (53, 40)]:
        weak = WeakAugment(AugmentConfig(base_size=base, crop_size=crop))
        for seed in range(10):
            torch.manual_seed(seed)
            _, out_mask = weak(image, mask)
            assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}


def test_weak_accepts_pil_masks_and_rejects_mismatched_sizes():
    image, mask = scene()
    palette_mask = Image.fromarray(mask, mode="P")
    palette_mask.putpalette([255, 0, 0] * 256)
    cfg = AugmentConfig(base_size=96, crop_size=96, scale_min=1.0, scale_max=1.0, hflip=0.0)
    torch.manual_seed(0)
    _, from_array = WeakAugment(cfg)(image, mask)
    for pil_mask in (palette_mask, Image.fromarray(mask, mode="L")):
        torch.manual_seed(0)
        _, from_pil = WeakAugment(cfg)(image, pil_mask)
        assert torch.equal(from_pil, from_array)
    with pytest.raises(ValueError, match="96x72"):
        WeakAugment(cfg)(image, mask[:-1])


def test_augmentation_is_reproducible_from_torch_seed():
    cfg = AugmentConfig(base_size=96, crop_size=64)
    weak, strong = WeakAugment(cfg), StrongAugment(cfg)
    image, mask = scene()
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append([t for _ in range(5) for t in strong(*weak(image, mask))])
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_normalize_and_eval_tensor():
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    expected = (image.float() / 255 - mean) / std
    assert torch.allclose(normalize(image), expected, atol=1e-6)
    batch = normalize(torch.stack([image, image]))
    assert batch.shape == (2, 3, 5, 7) and torch.allclose(batch[1], expected, atol=1e-6)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    eval_tensor = to_eval_tensor(pil)
    assert eval_tensor.dtype == torch.float32 and eval_tensor.shape == (3, 5, 7)
    assert torch.allclose(eval_tensor, expected, atol=1e-6)
    assert to_eval_tensor(pil.convert("L")).shape == (3, 5, 7)
