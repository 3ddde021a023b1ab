"""Forward passes at original resolution: plain, sliding-window and test-time augmented.

:class:`Predictor` owns how a model runs for inference (mixed precision, memory format, and batches
split in halves when the GPU runs out of memory); :func:`tta_predict` averages softmax over scales
and flips with all flips of all images of one scale in one batch, so the paper's 5 scales x 2 flips
cost 5 forward passes per batch of images instead of 10 per image.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stpp.core.config import EvalConfig
from stpp.engine.device import is_out_of_memory


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


class Predictor:
    """Runs a model in eval mode for inference.

    Args:
        model: the model; moved to ``channels_last`` here when asked.
        eval_cfg: whole images or sliding window.
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or None for fp32.
        channels_last: run in ``channels_last`` memory format.

    A batch that runs out of GPU memory is split in halves (recursively, down to one image), and
    the number of pixels that fit is remembered, so later batches are cut to size up front.
    """

    def __init__(self, model: nn.Module, eval_cfg: EvalConfig | None = None, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> None:
        self.model = model.eval()
        self.eval_cfg = eval_cfg
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.max_pixels: int | None = None
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast(images.device):
            return forward_logits(self.model, images, self.eval_cfg)

    def chunks(self, images: torch.Tensor):
        """Yield ``(start, logits)`` for consecutive sub-batches of ``images`` that fit in memory.

        Logits are float32 (N_chunk, C, H, W). Callers consume each chunk before the next is
        computed, so the memory of only one chunk's logits is held at a time.
        """
        total = images.shape[0]
        pixels = images.shape[-2] * images.shape[-1]
        start = 0
        while start < total:
            size = total - start
            if self.max_pixels is not None:
                size = max(1, min(size, self.max_pixels // pixels))
            try:
                logits = self._forward(images[start : start + size]).float()
            except RuntimeError as error:
                if not is_out_of_memory(error) or size == 1:
                    raise
                logits = None
            if logits is None:
                # Outside the except block, so the failed pass's tensors are already released.
                torch.cuda.empty_cache()
                self.max_pixels = max(pixels, (size // 2) * pixels)
                continue
            yield start, logits
            start += size

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, C, H, W) of a batch, computed in as few sub-batches as memory allows."""
        parts = [logits for _, logits in self.chunks(images)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class TTAResult:
    """What :func:`tta_predict` returns.

    Attributes:
        probs: softmax averaged over every view, float32 (N, C, H, W).
        single_scale: the argmax of the plain (scale 1, unflipped) view, (N, H, W) int64, when asked
            for and scale 1.0 is among the scales; else None.
    """

    probs: torch.Tensor
    single_scale: torch.Tensor | None = None


def tta_predict(
    predictor: Predictor,
    images: torch.Tensor,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    *,
    batch_views: bool = True,
    keep_single_scale: bool = False,
) -> TTAResult:
    """Softmax averaged over scales and, optionally, horizontal flips, for a batch of same-size images.

    Args:
        predictor: runs the model.
        images: normalised images (N, 3, H, W).
        scales: resize factors; probabilities are resized back to (H, W) before averaging.
        flip: add the mirrored view of every scale.
        batch_views: run an image batch and its mirror as one batch per scale (stpp); False runs
            every view separately (the paper's loop, kept for the speed benchmark).
        keep_single_scale: also return the argmax of the scale-1 unflipped view (the K-th
            checkpoint's stability mask, from the same pass as its TTA labels).

    Returns:
        The averaged probabilities and, if asked, the single-scale prediction.
    """
    count, _, height, width = images.shape
    total = None
    single = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip and batch_views:
            views = [torch.cat([scaled, scaled.flip(-1)])]
        elif flip:
            views = [scaled, scaled.flip(-1)]
        else:
            views = [scaled]
        for view_index, view in enumerate(views):
            for start, logits in predictor.chunks(view):
                if keep_single_scale and scale == 1.0 and view_index == 0:
                    plain = logits[: max(0, min(logits.shape[0], count - start))]
                    if plain.shape[0]:
                        part = plain.argmax(dim=1)
                        single = part if single is None else torch.cat([single, part])
                probs = logits.softmax(dim=1)
                del logits
                if scale != 1.0:
                    probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
                if total is None:
                    total = torch.zeros(count, probs.shape[1], height, width, device=probs.device)
                _accumulate(total, probs, start, count, flipped_view=view_index == 1)
    num_views = len(scales) * (2 if flip else 1)
    return TTAResult(total / num_views, single)


def _accumulate(total: torch.Tensor, probs: torch.Tensor, start: int, count: int, flipped_view: bool) -> None:
    # Rows of a batched view are [image 0..N-1, mirrored 0..N-1]; add each range to its image in
    # order (plain before mirrored), so the sum is the per-view loop's, independent of chunking.
    stop = start + probs.shape[0]
    if flipped_view:
        total[start:stop] += probs.flip(-1)
        return
    plain_stop = min(stop, count)
    if start < plain_stop:
        total[start:plain_stop] += probs[: plain_stop - start]
    mirror_start = max(start, count)
    if mirror_start < stop:
        total[mirror_start - count : stop - count] += probs[mirror_start - start :].flip(-1)
