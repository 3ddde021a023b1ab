"""Forward passes at original resolution: plain, sliding-window and test-time augmented."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stpp.config import EvalConfig


def forward_logits(model: nn.Module, images: torch.Tensor, eval_cfg: EvalConfig | None = None) -> torch.Tensor:
    """Logits (N, C, H, W) for a batch of normalised images, whole or by sliding window."""
    if eval_cfg is not None and eval_cfg.sliding_window:
        return _sliding_window(model, images, eval_cfg)
    return model(images)["out"]


def _sliding_window(model: nn.Module, images: torch.Tensor, eval_cfg: EvalConfig) -> torch.Tensor:
    window = eval_cfg.window_size
    if window <= 0:
        raise ValueError("eval.sliding_window needs eval.window_size > 0")
    stride = eval_cfg.window_stride or max(1, window * 2 // 3)
    _, _, height, width = images.shape
    pad_h, pad_w = max(0, window - height), max(0, window - width)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = padded.shape[-2:]
    logits = None
    counts = torch.zeros(1, 1, full_h, full_w, device=images.device)
    for top in _window_starts(full_h, window, stride):
        for left in _window_starts(full_w, window, stride):
            out = model(padded[..., top : top + window, left : left + window])["out"].float()
            if logits is None:
                logits = torch.zeros(out.shape[0], out.shape[1], full_h, full_w, device=images.device)
            logits[..., top : top + window, left : left + window] += out
            counts[..., top : top + window, left : left + window] += 1
    return (logits / counts)[..., :height, :width]


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(1, size - window + 1), stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    eval_cfg: EvalConfig | None = None,
) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W), averaged over scales and, optionally, a horizontal flip.

    With ``scales=(1.0,)`` and no flip this is the plain single-scale prediction.
    """
    height, width = images.shape[-2:]
    total = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probs = forward_logits(model, view, eval_cfg).float().softmax(dim=1)
            if index == 1:
                probs = probs.flip(-1)
            if scale != 1.0:
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
