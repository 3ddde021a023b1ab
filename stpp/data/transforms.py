"""Joint (image, mask) augmentation: the paper's weak and strong pipelines, and normalisation.

Every op takes and returns an ``(image, mask)`` pair of tensors: the image ``uint8 [3, H, W]``, the
mask ``uint8 [H, W]`` of class indices with ``ignore_index`` for "no label". Geometric ops move both
the same way; masks are only ever resized with nearest-neighbour sampling, so they never gain values
they did not have (besides ``ignore_index`` from padding and Cutout). Randomness comes from torch's
global RNG, so ``torch.manual_seed`` and DataLoader worker seeding make runs reproducible.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from stpp.core.config import IGNORE_INDEX, AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[Tensor, Tensor]


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _randint(low: int, high: int) -> int:
    """An integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, ()))


class RandomScale:
    """Resize so that the long side is a random integer in ``[scale_min, scale_max] x base_size``.

    The aspect ratio is kept. The image is resampled bilinearly (antialiased when shrinking), the
    mask with exact nearest neighbour (pixel centres aligned with the image's).
    """

    def __init__(self, base_size: int, scale_min: float, scale_max: float) -> None:
        self.min_long = max(1, int(base_size * scale_min))
        self.max_long = max(self.min_long, int(base_size * scale_max))

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        height, width = image.shape[-2:]
        long_side = _randint(self.min_long, self.max_long)
        if height >= width:
            size = [long_side, max(1, int(width * long_side / height + 0.5))]
        else:
            size = [max(1, int(height * long_side / width + 0.5)), long_side]
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        mask = F.resize(mask, size, interpolation=InterpolationMode.NEAREST_EXACT)
        return image, mask


class PadToSize:
    """Pad right and bottom to at least ``size x size``: the image with 0, the mask with ignore."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.size = size
        self.ignore_index = ignore_index

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        height, width = image.shape[-2:]
        pad_h, pad_w = max(0, self.size - height), max(0, self.size - width)
        if pad_h or pad_w:
            padding = [0, 0, pad_w, pad_h]
            image = F.pad(image, padding, fill=0)
            mask = F.pad(mask, padding, fill=self.ignore_index)
        return image, mask


class RandomCrop:
    """A random ``size x size`` window of a pair at least that large (pad it first)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(f"cannot crop {self.size}x{self.size} from {width}x{height}; pad first")
        top = _randint(0, height - self.size)
        left = _randint(0, width - self.size)
        return (F.crop(image, top, left, self.size, self.size),
                F.crop(mask, top, left, self.size, self.size))


class RandomHorizontalFlip:
    """Mirror image and mask together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        if torch.rand(()) < self.p:
            return F.horizontal_flip(image), F.horizontal_flip(mask)
        return image, mask


class Cutout:
    """Cutout (DeVries & Taylor 2017) as ST++ uses it: noise in a box, ignore in the target.

    With probability ``p`` a box of area ``U(area_min, area_max) x H x W`` and aspect ratio
    (height / width) ``U(ratio_min, ratio_max)`` is drawn, its sides truncated to whole pixels; its
    pixels get uniform random values per pixel and channel, and the mask inside it becomes
    ``ignore_index``.

    With ``redraw`` (the paper's code) the top-left corner is any pixel of the image, and size, ratio
    and corner are drawn again until the box lies inside the image: large boxes fit at few corners,
    so they are rarer than their area draw. Without it, a side longer than the image is shortened to
    the image side and the corner is drawn among those where the box fits.
    """

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3), ignore_index: int = IGNORE_INDEX,
                 redraw: bool = True) -> None:
        self.p = p
        self.area = area
        self.ratio = ratio
        self.ignore_index = ignore_index
        self.redraw = redraw

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random box ``(top, left, box_height, box_width)`` inside a ``height x width`` image."""
        while True:
            area = _uniform(*self.area) * height * width
            ratio = _uniform(*self.ratio)
            box_h, box_w = int(math.sqrt(area * ratio)), int(math.sqrt(area / ratio))
            if not self.redraw:
                box_h, box_w = min(height, max(1, box_h)), min(width, max(1, box_w))
                return _randint(0, height - box_h), _randint(0, width - box_w), box_h, box_w
            top, left = _randint(0, height - 1), _randint(0, width - 1)
            if top + box_h <= height and left + box_w <= width:
                return top, left, box_h, box_w

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        if torch.rand(()) >= self.p:
            return image, mask
        top, left, box_h, box_w = self.sample_box(*image.shape[-2:])
        image, mask = image.clone(), mask.clone()
        noise = torch.randint(0, 256, (image.shape[-3], box_h, box_w), dtype=torch.uint8)
        image[..., top:top + box_h, left:left + box_w] = noise
        mask[..., top:top + box_h, left:left + box_w] = self.ignore_index
        return image, mask


def _as_pair(image: Image.Image, mask: np.ndarray | Image.Image) -> Pair:
    if image.mode != "RGB":
        image = image.convert("RGB")
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "P"):
            raise ValueError(f"mask must be an 8-bit grayscale or palette image, not mode {mask.mode}")
        mask = np.array(mask, dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be a uint8 (H, W) array, got {mask.dtype} {mask.shape}")
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    return (tv_tensors.Image(F.pil_to_tensor(image)),
            tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask))))


class WeakAugment:
    """The weak augmentation every training image gets: random scale, pad, square crop, flip.

    Args:
        cfg: base and crop size, scale range and flip probability.
        ignore_index: the mask value of padded pixels.
    """

    def __init__(self, cfg: AugmentConfig, ignore_index: int = IGNORE_INDEX) -> None:
        self.ops = [
            RandomScale(cfg.base_size, cfg.scale_min, cfg.scale_max),
            PadToSize(cfg.crop_size, ignore_index),
            RandomCrop(cfg.crop_size),
            RandomHorizontalFlip(cfg.hflip),
        ]

    def __call__(self, image: Image.Image, mask: np.ndarray | Image.Image) -> Pair:
        """Augment one pair.

        Args:
            image: an RGB PIL image (other modes are converted).
            mask: the class-index mask, a uint8 ``(H, W)`` array or an ``L``/``P`` PIL image, the
                image's size.

        Returns:
            ``(image uint8 [3, crop, crop], mask uint8 [crop, crop])`` as plain tensors.

        Raises:
            ValueError: the mask is not 8-bit single-channel or its size differs from the image's.
        """
        pair = _as_pair(image, mask)
        for op in self.ops:
            pair = op(*pair)
        image_t, mask_t = pair
        return image_t.as_subclass(Tensor).contiguous(), mask_t.as_subclass(Tensor).contiguous()


class StrongAugment:
    """The strong augmentation of pseudo-labelled images, applied after :class:`WeakAugment`.

    Colour jitter (brightness, contrast, saturation 0.5, hue 0.25) with probability ``jitter_p``,
    grayscale with ``grayscale_p``, Gaussian blur with sigma ``U(0.1, 2.0)`` with ``blur_p``, and
    :class:`Cutout` with ``cutout_p`` when ``cfg.cutout``. Only Cutout touches the mask. The
    keyword probabilities default to the paper's; tests switch single ops off with them.

    Args:
        cfg: ``crop_size`` (bounds the blur kernel), ``cutout`` and ``cutout_redraw``.
        ignore_index: the mask value inside the Cutout box.
    """

    def __init__(self, cfg: AugmentConfig, ignore_index: int = IGNORE_INDEX, *, jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_p: float = 0.5, cutout_p: float = 0.5) -> None:
        # 2 * ceil(3 * sigma_max) + 1 covers the widest blur; reflect padding needs it below the side.
        kernel = min(13, 2 * cfg.crop_size - 1)
        self.colour = v2.Compose([
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=jitter_p),
            v2.RandomGrayscale(p=grayscale_p),
            v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=blur_p),
        ])
        self.cutout = Cutout(p=cutout_p, ignore_index=ignore_index, redraw=cfg.cutout_redraw) if cfg.cutout else None

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Augment one pair from :class:`WeakAugment`.

        Args:
            image: ``uint8 [3, H, W]``.
            mask: ``uint8 [H, W]``.

        Returns:
            ``(image uint8 [3, H, W], mask uint8 [H, W])``.
        """
        image = self.colour(tv_tensors.Image(image)).as_subclass(Tensor)
        if self.cutout is not None:
            image, mask = self.cutout(image, mask)
        return image.contiguous(), mask


def normalize(image: Tensor) -> Tensor:
    """Scale to [0, 1] and normalise with the ImageNet mean and std.

    Args:
        image: ``uint8`` (or float in [0, 1]) ``[3, H, W]`` or a batch ``[N, 3, H, W]``, on any device.

    Returns:
        A float32 tensor of the same shape, on the same device.
    """
    if image.dtype == torch.uint8:
        image = image.float().div_(255)
    else:
        image = image.float()
    mean, std = _imagenet_stats(image.device)
    return (image - mean) / std


@functools.lru_cache(maxsize=None)
def _imagenet_stats(device: torch.device) -> tuple[Tensor, Tensor]:
    # Built once per device: a host-to-GPU copy of a fresh tensor every training step would sync.
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return mean, std


def to_eval_tensor(image: Image.Image) -> Tensor:
    """A PIL image as a normalised float ``[3, H, W]`` tensor at its original size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return normalize(F.pil_to_tensor(image))
