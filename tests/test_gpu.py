"""GPU features: AMP training, channels_last, batched labelling, SyncBatchNorm, ``--auto-batch``.

Tests marked ``gpu`` need CUDA (``python -m pytest -m gpu``); the out-of-memory handling of
``--auto-batch`` is also checked on the CPU with a simulated out-of-memory error.
"""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers import run_args, run_stpp
from torch import nn

from stpp.core.config import StppConfig, get_preset
from stpp.core.events import Activity, ListSink, read_events
from stpp.core.masks import read_mask
from stpp.data.datasets import FolderDataset, TrainDataset, TrainItem, read_split
from stpp.data.transforms import StrongAugment, WeakAugment
from stpp.engine.autobatch import BatchTooLarge, auto_batch_size, halve_until_fits
from stpp.engine.device import autocast_dtype, use_channels_last
from stpp.engine.inference import Predictor, tta_predict
from stpp.engine.train import FitPlan, fit, prepare_model
from stpp.models import build_model
from stpp.selftrain.pseudo import label_images

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
gpu = [pytest.mark.gpu, needs_cuda]


def _cfg(**optim) -> StppConfig:
    cfg = get_preset("test")
    return replace(cfg, optim=replace(cfg.optim, **optim),
                   data=replace(cfg.data, num_classes=4, class_names=("background", "red", "green", "blue")))


def _train_set(root: Path) -> TrainDataset:
    dataset = FolderDataset.open(root)
    ids = read_split(root / "labeled.txt")
    cfg = _cfg()
    items = [TrainItem(i, dataset.image_path(i), dataset.mask_path(i)) for i in ids]
    return TrainDataset(items, WeakAugment(cfg.augment), StrongAugment(cfg.augment))


# Simulated on the CPU ----------------------------------------------------------------------------

def _oom(batch: int) -> None:
    if batch > 1:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_auto_batch_halves_on_out_of_memory_and_rescales_lr():
    cfg = replace(get_preset("test"), optim=replace(get_preset("test").optim, batch_size=8))
    tried = []
    fitted, event = auto_batch_size(cfg, torch.device("cpu"), 4, probe=lambda b: (tried.append(b), _oom(b)))
    assert tried == [8, 4, 2, 1]
    assert fitted.optim.batch_size == 1 and fitted.optim.base_lr == cfg.optim.base_lr
    assert event.kind == "warning" and "does not fit" in event.message
    assert event.data["out_of_memory_at"] == [8, 4, 2] and event.data["lr"] == pytest.approx(cfg.optim.base_lr / 16)


def test_auto_batch_keeps_a_batch_that_fits_and_refuses_one_that_never_does():
    cfg = get_preset("test")
    same, event = auto_batch_size(cfg, torch.device("cpu"), 4, probe=lambda b: None)
    assert same == cfg and event.kind == "info"
    with pytest.raises(BatchTooLarge):
        halve_until_fits(4, lambda b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(ValueError):  # any other error is not an out-of-memory and propagates
        halve_until_fits(4, lambda b: (_ for _ in ()).throw(ValueError("bad")))
    cpu_cfg, note = auto_batch_size(cfg, torch.device("cpu"), 4)
    assert cpu_cfg == cfg and "CUDA" in note.message


def test_predictor_splits_a_batch_that_runs_out_of_memory():
    torch.manual_seed(0)
    model = build_model(get_preset("test").model, 4).eval()

    class Picky(nn.Module):
        def forward(self, x):
            _oom(x.shape[0] // 2)  # more than 2 images "do not fit"
            return model(x)

    images = torch.randn(5, 3, 32, 40)
    with torch.inference_mode():
        expected = model(images)["out"]
        predictor = Predictor(Picky())
        got = predictor.logits(images)
        assert predictor.max_pixels == 2 * 32 * 40
        assert torch.allclose(got, expected, atol=1e-5)
        probs = tta_predict(predictor, images, (0.5, 1.0), flip=True).probs
        loop = tta_predict(Predictor(model), images, (0.5, 1.0), flip=True, batch_views=False).probs
        assert torch.allclose(probs, loop, atol=1e-5)


# On a GPU ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_amp_training_step_channels_last(synthetic_dataset: Path, tmp_path: Path):
    device = torch.device("cuda")
    cfg = _cfg(epochs=2)
    assert autocast_dtype(cfg.optim.amp, device) in (torch.bfloat16, torch.float16)
    assert use_channels_last(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    sink = ListSink()
    plan = FitPlan("teacher", 2, {2: tmp_path / "final.pt"}, tmp_path / "last.pt", log_every=1)
    fit(model, _train_set(synthetic_dataset), cfg, plan, device, sink, seed=0)
    losses = [e.loss for e in sink.events if e.kind == "step"]
    assert losses and all(np.isfinite(losses))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    state = torch.load(tmp_path / "final.pt", weights_only=True)
    plain = build_model(replace(cfg.model, pretrained="none"), 4)
    plain.load_state_dict(state["model"])  # a channels_last / AMP checkpoint loads into a plain CPU model


@pytest.mark.gpu
@needs_cuda
def test_channels_last_bf16_inference_agrees_with_fp32():
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(get_preset("test").model, 4).eval().to(device)
    images = torch.randn(4, 3, 96, 128, device=device)
    with torch.inference_mode():
        reference = Predictor(model).logits(images).argmax(1)
        fast = Predictor(build_model(get_preset("test").model, 4).eval().to(device), amp_dtype=torch.bfloat16,
                         channels_last=True)
        fast.model.load_state_dict(model.state_dict())
        agreement = (fast.logits(images).argmax(1) == reference).float().mean().item()
    assert agreement > 0.98


@pytest.mark.gpu
@needs_cuda
def test_batched_labelling_on_gpu(synthetic_dataset: Path, tmp_path: Path):
    device = torch.device("cuda")
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    fit(model, _train_set(synthetic_dataset), replace(cfg, optim=replace(cfg.optim, epochs=5)),
        FitPlan("teacher", 5, {}, tmp_path / "last.pt"), device, ListSink(), seed=0)
    dataset = FolderDataset.open(synthetic_dataset)
    ids = read_split(synthetic_dataset / "unlabeled.txt")
    paths = [dataset.image_path(i) for i in ids]
    sink = ListSink()
    label_images(model, ids, paths, tmp_path / "gpu", cfg, [(0, 0, 0)] * 4, device, sink, Activity.labelling("teacher"), tta=True,
                 single_scale_dir=tmp_path / "gpu_single")
    label_images(model.cpu().to(memory_format=torch.contiguous_format), ids, paths, tmp_path / "cpu",
                 replace(cfg, optim=replace(cfg.optim, amp="off")), [(0, 0, 0)] * 4, torch.device("cpu"), ListSink(),
                 Activity.labelling("teacher"), tta=True)
    agree = [np.mean(read_mask(tmp_path / "gpu" / f"{i}.png") == read_mask(tmp_path / "cpu" / f"{i}.png")) for i in ids]
    assert np.mean(agree) > 0.98
    assert {p.stem for p in (tmp_path / "gpu_single").glob("*.png")} == set(ids)
    final = [e for e in sink.events if e.kind == "labels" and "per_rank" in e.data][-1]
    assert final.data["per_rank"] == [len(ids)] and final.data["peak_memory_mb"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
@needs_cuda
def test_sync_batchnorm_conversion_single_process():
    device = torch.device("cuda")
    cfg = replace(get_preset("test"), model=replace(get_preset("test").model, sync_bn=True))
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    plain_keys = set(model.state_dict())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert set(converted.state_dict()) == plain_keys  # checkpoints stay loadable into plain BatchNorm models
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        converted.train()
        out = converted(torch.randn(2, 3, 48, 48, device=device))["out"]
        out.float().mean().backward()
        assert all(p.grad is not None for p in converted.parameters() if p.requires_grad)
        # prepare_model converts only under multi-GPU DDP; with one process it keeps plain BatchNorm
        again = prepare_model(build_model(cfg.model, 4), cfg, device)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in again.modules())
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@needs_cuda
def test_gpu_run_reports_peak_memory_and_auto_batch(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_stpp(*run_args(synthetic_dataset, out, "st++", "test", "--device", "cuda", "--auto-batch",
                       "--set", "optim.epochs=6", "--set", "optim.student_epochs=1"))
    events = read_events(out / "events.jsonl")
    assert events[0]["message"].startswith("--auto-batch") and events[0]["data"]["batch_size"] == 4
    ends = [e for e in events if e["kind"] == "stage_end"]
    assert [e["stage"] for e in ends] == ["teacher", "stage1", "stage2"]
    assert all(e["data"]["peak_memory_mb"] > 0 for e in ends)
    config = json.loads((out / "config.json").read_text())
    assert config["optim"]["amp"] == "auto"
