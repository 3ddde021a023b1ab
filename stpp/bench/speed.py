"""``python -m stpp.bench speed``: training and labelling throughput, the paper's recipe against stpp's.

One run prints, side by side, training img/s and labelling img/s with peak memory for

* (a) the paper recipe's settings: fp32, NCHW, test-time augmentation as a loop over every scale
  and flip of every image, one image at a time;
* (b) stpp's defaults on this device: mixed precision (``optim.amp=auto``: bf16 or fp16 on CUDA,
  fp32 on the CPU), ``channels_last`` (``auto``: on CUDA), TTA with each scale's flips batched over
  batches of same-size images.

Both use the same model (architecture and initial weights), the same batches (augmented once by
the DataLoader and cycled through, so the loader never limits either setting; its own rate is
printed), the same batch size and the same cuDNN settings (PyTorch's defaults, which let fp32
convolutions use TF32 on Ampere and later GPUs), so the ratio measures precision, memory format and
TTA batching only. Data are generated images of the preset's typical size in a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from stpp.core.config import PRESETS, StppConfig, apply_overrides, get_preset
from stpp.data.datasets import TrainDataset, TrainItem
from stpp.data.transforms import WeakAugment
from stpp.engine.device import autocast_dtype, configure_cpu_threads, resolve_device, use_channels_last
from stpp.engine.inference import Predictor, tta_predict
from stpp.engine.train import init_loader_worker, make_optimizer, train_step
from stpp.models import build_model
from stpp.selftrain.pseudo import _collate_by_shape, _Images, size_batches

_POOL_BATCHES = 8
"""Augmented batches kept in (pinned) host memory and cycled through by the timed training steps."""

_TYPICAL_SIZE = {"pascal": (500, 375), "cityscapes": (2048, 1024)}
"""(width, height) of the generated images; other presets: base_size x 3/4 base_size."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stpp.bench speed", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default: pascal on CUDA, "
                                                       "tiny on the CPU)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps / batches first (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="(a) and (b) alternate this many times; the best round of each counts (default 3)")
    parser.add_argument("--images", type=int, default=0,
                        help="images to label per setting (default: 8 batches on CUDA, 2 on the CPU; at least 8)")
    parser.add_argument("--image-size", default=None, metavar="WxH", help="generated image size")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the preset's")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (default: the preset's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both settings, e.g. model.backbone=resnet101")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cpu_threads()
    device = resolve_device(args.device)
    preset = args.preset or ("pascal" if device.type == "cuda" else "tiny")
    cfg = apply_overrides(get_preset(preset), list(args.overrides))
    optim = cfg.optim
    if args.batch_size:
        optim = replace(optim, batch_size=args.batch_size)
    if args.workers >= 0:
        optim = replace(optim, num_workers=args.workers)
    cfg = replace(cfg, optim=optim, model=replace(cfg.model, pretrained="none"),
                  pseudo=replace(cfg.pseudo, tta=True))
    num_classes = {"pascal": 21, "cityscapes": 19}.get(preset, 11)
    cfg = replace(cfg, data=replace(cfg.data, num_classes=num_classes))
    width, height = _image_size(args.image_size, preset, cfg)
    # A labelling pass has fixed costs (loader workers starting, the first batch's decode with nothing
    # to overlap it); on a GPU they swamp a pass of two batches, so time enough batches to amortise them.
    num_images = args.images or max(8, (8 if device.type == "cuda" else 2) * cfg.optim.batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    initial = build_model(cfg.model, num_classes).state_dict()
    settings = {
        "a": _Setting("(a) paper recipe", amp=None, channels_last=False, batched_tta=False),
        "b": _Setting("(b) stpp defaults", amp=autocast_dtype(cfg.optim.amp, device),
                      channels_last=use_channels_last(cfg, device), batched_tta=True),
    }
    with tempfile.TemporaryDirectory(prefix="stpp-speed-") as tmp:
        paths = _write_images(Path(tmp), max(num_images, 2 * cfg.optim.batch_size), width, height, num_classes)
        loader = _train_loader(paths[: max(num_images, 2 * cfg.optim.batch_size)], cfg, device)
        loader_rate = _loader_rate(_cycle(loader), args.warmup, args.steps, cfg.optim.batch_size)
        # Training cycles over batches decoded once, so neither setting waits on the loader and the
        # ratio measures the model step alone (the loader's own rate is printed beside it).
        batches = itertools.cycle(_batch_pool(loader, _POOL_BATCHES, pin=device.type == "cuda"))
        label_paths = paths[:num_images]
        # Alternating rounds, best of each: on a shared machine the load changes under a long run.
        for _ in range(max(1, args.rounds)):
            for setting in settings.values():
                model = _fresh_model(cfg, num_classes, initial)
                rate, peak = _measure(
                    device, lambda m=model, s=setting: _train(m, s, cfg, device, batches, args.warmup, args.steps))
                setting.train_rate, setting.train_peak = max(setting.train_rate, rate), max(setting.train_peak, peak)
                del model
                _free(device)
            for setting in settings.values():
                model = _fresh_model(cfg, num_classes, initial)
                rate, peak = _measure(
                    device, lambda m=model, s=setting: _label(m, s, cfg, device, label_paths, args.warmup))
                setting.label_rate, setting.label_peak = max(setting.label_rate, rate), max(setting.label_peak, peak)
                del model
                _free(device)
    print(_table(settings, cfg, preset, device, width, height, num_images, args, loader_rate))
    return 0


class _Setting:
    def __init__(self, name: str, amp: torch.dtype | None, channels_last: bool, batched_tta: bool) -> None:
        self.name = name
        self.amp = amp
        self.channels_last = channels_last
        self.batched_tta = batched_tta
        self.train_rate = self.train_peak = self.label_rate = self.label_peak = 0.0

    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]


def _image_size(text: str | None, preset: str, cfg: StppConfig) -> tuple[int, int]:
    if text:
        width, _, height = text.lower().partition("x")
        return int(width), int(height)
    base = cfg.augment.base_size
    return _TYPICAL_SIZE.get(preset, (base, base * 3 // 4))


def _write_images(folder: Path, count: int, width: int, height: int, num_classes: int) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
        mask = np.kron(mask, np.ones((8, 8), dtype=np.uint8))[:height, :width]
        image_path, mask_path = folder / f"img_{index:04d}.jpg", folder / f"img_{index:04d}.png"
        Image.fromarray(image).save(image_path, quality=90)
        Image.fromarray(mask).save(mask_path)
        pairs.append((image_path, mask_path))
    return pairs


def _train_loader(pairs: list[tuple[Path, Path]], cfg: StppConfig, device: torch.device) -> DataLoader:
    items = [TrainItem(image.stem, image, mask) for image, mask in pairs]
    dataset = TrainDataset(items, WeakAugment(cfg.augment, cfg.data.ignore_index))
    workers = cfg.optim.num_workers
    return DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=init_loader_worker, generator=torch.Generator().manual_seed(0))


def _cycle(loader: DataLoader) -> Iterator:
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


def _fresh_model(cfg: StppConfig, num_classes: int, state: dict) -> torch.nn.Module:
    model = build_model(cfg.model, num_classes)
    model.load_state_dict(copy.deepcopy(state))
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _batch_pool(loader: DataLoader, count: int, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = list(itertools.islice(_cycle(loader), count))
    if pin:
        batches = [(images.pin_memory(), masks.pin_memory()) for images, masks in batches]
    return batches


def _loader_rate(batches: Iterator, warmup: int, steps: int, batch_size: int) -> float:
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * batch_size / (time.perf_counter() - start)


def _train(model: torch.nn.Module, setting: _Setting, cfg: StppConfig, device: torch.device, batches: Iterator,
           warmup: int, steps: int) -> float:
    model.to(device).train()
    if setting.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.amp is torch.float16)

    def step() -> None:
        images, masks = next(batches)
        train_step(model, optimizer, scaler, images, masks, device, setting.amp, setting.channels_last,
                   cfg.data.ignore_index)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * cfg.optim.batch_size / (time.perf_counter() - start)


@torch.inference_mode()
def _label(model: torch.nn.Module, setting: _Setting, cfg: StppConfig, device: torch.device,
           pairs: list[tuple[Path, Path]], warmup: int) -> float:
    model.to(device)
    predictor = Predictor(model, cfg.eval, setting.amp, setting.channels_last)
    paths = [image for image, _ in pairs]
    batch = cfg.optim.batch_size if setting.batched_tta else 1
    scales, flip = tuple(cfg.pseudo.tta_scales), cfg.pseudo.tta_flip
    workers = cfg.optim.num_workers

    def run(subset: list[Path]) -> None:
        sizes = [Image.open(p).size for p in subset]
        loader = DataLoader(_Images(subset), batch_sampler=size_batches(sizes, batch), collate_fn=_collate_by_shape,
                            num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=init_loader_worker)
        for groups in loader:
            for _, images in groups:
                probs = tta_predict(predictor, images.to(device, non_blocking=True), scales, flip,
                                    batch_views=setting.batched_tta).probs
                probs.argmax(dim=1).to(torch.uint8).cpu()

    if warmup:
        run(paths[:batch])
    _sync(device)
    start = time.perf_counter()
    run(paths)
    _sync(device)
    return len(paths) / (time.perf_counter() - start)


def _measure(device: torch.device, work: Callable[[], float]) -> tuple[float, float]:
    """``(work(), peak memory in MiB)``: CUDA allocator peak, or the growth of the process RSS on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        rate = work()
        return rate, torch.cuda.max_memory_allocated(device) / 2**20
    sampler = _RssSampler()
    with sampler:
        rate = work()
    return rate, sampler.peak_growth_mb


class _RssSampler:
    """Samples this process's resident memory every few milliseconds (the CPU has no allocator peak)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = 0
        self.running = False
        self.thread: threading.Thread | None = None

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self) -> "_RssSampler":
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self.running = False
        if self.thread is not None:
            self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; host {text}"
    return f"{text}; torch {torch.__version__}"


def _table(settings: dict[str, _Setting], cfg: StppConfig, preset: str, device: torch.device, width: int,
           height: int, num_images: int, args: argparse.Namespace, loader_rate: float) -> str:
    a, b = settings["a"], settings["b"]
    views = len(cfg.pseudo.tta_scales) * (2 if cfg.pseudo.tta_flip else 1)
    memory = "peak GPU memory (MiB)" if device.type == "cuda" else "peak RSS growth (MiB, approx.)"
    rows = [
        ("precision / memory format", f"{a.precision()} / {'NHWC' if a.channels_last else 'NCHW'}",
         f"{b.precision()} / {'channels_last' if b.channels_last else 'NCHW'}", ""),
        ("TTA views per forward", "1 (loop)", f"{'2' if cfg.pseudo.tta_flip else '1'} x batch", ""),
        ("train img/s", f"{a.train_rate:.2f}", f"{b.train_rate:.2f}", f"{b.train_rate / a.train_rate:.2f}x"),
        (f"train {memory}", f"{a.train_peak:.0f}", f"{b.train_peak:.0f}", ""),
        ("label img/s (TTA)", f"{a.label_rate:.2f}", f"{b.label_rate:.2f}", f"{b.label_rate / a.label_rate:.2f}x"),
        (f"label {memory}", f"{a.label_peak:.0f}", f"{b.label_peak:.0f}", ""),
    ]
    header = ("", a.name, b.name, "(b)/(a)")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(4)]
    lines = [
        "stpp speed benchmark",
        f"machine: {_machine(device)}; device {device}",
        f"preset {preset}: {cfg.model.arch} / {cfg.model.backbone} OS {cfg.model.output_stride}, "
        f"crop {cfg.augment.crop_size}, batch {cfg.optim.batch_size}, loader workers {cfg.optim.num_workers}, "
        f"cudnn.benchmark {'on' if device.type == 'cuda' else 'n/a'}",
        f"best of {max(1, args.rounds)} alternating rounds; "
        f"training: {args.steps} timed steps after {args.warmup} warm-up on {_POOL_BATCHES} pre-loaded batches "
        f"(the loader alone: {loader_rate:.1f} img/s); "
        f"labelling: {num_images} images {width}x{height}, TTA {len(cfg.pseudo.tta_scales)} scales"
        f"{' x flip' if cfg.pseudo.tta_flip else ''} = {views} views, decode + forward + argmax (no PNG writing)",
        "",
    ]
    for row in [header] + rows:
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    if (a.amp, a.channels_last) == (b.amp, b.channels_last):
        lines.append(f"note: on {device.type} stpp's defaults train exactly as (a) does, so the train ratio "
                     "shows only run-to-run noise")
    return "\n".join(lines)
