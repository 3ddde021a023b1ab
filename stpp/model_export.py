"""Export a run's trained model: the checkpoint with its config, and a TorchScript file that runs
without stpp installed.

``python -m stpp.model_export RUN_DIR [--stage S] --out DIR [--zip FILE]`` writes into ``DIR``:

- ``checkpoint.pt``: the stage's checkpoint as stpp saved it (``model`` state dict, ``config``...),
  readable with ``torch.load(path, weights_only=True)`` and rebuilt by :func:`stpp.engine.checkpoint.load_model`;
- ``config.json``: the run's resolved config;
- ``model.torchscript.pt``: the network with the ImageNet normalisation built in, traced:
  ``torch.jit.load(path)(images)`` takes RGB float images ``(N, 3, H, W)`` in ``[0, 1]`` and
  returns class logits ``(N, C, H, W)`` at the same size (``argmax(1)`` gives the mask);
- ``model.json``: classes, palette, ignore index, stage, input contract and the file list.

This module imports torch. The web app never imports it: it runs it as a child process
(:func:`stpp.services.outputs.export_model_zip`), the same way it runs training in a worker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save
from stpp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from stpp.engine.checkpoint import CheckpointError, load_model
from stpp.headless import RunError, read_run_config, stage_model_path

TRACE_SIZE = 96
"""Side of the example input the model is traced with (other sizes work: shapes are traced symbolically)."""


class ExportedSegmenter(nn.Module):
    """What the TorchScript file holds: normalise, run the network, return the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)["out"]


@dataclass(frozen=True)
class ModelExport:
    """The files written by :func:`export_model`."""

    stage: str
    checkpoint: Path
    config: Path
    torchscript: Path
    info: Path


def export_model(run_dir: str | Path, out_dir: str | Path, stage: str | None = None) -> ModelExport:
    """Write a run stage's checkpoint, config, TorchScript model and ``model.json`` into ``out_dir``.

    The traced model is checked against the original on an input of another size before it is kept.

    Raises:
        RunError: not a run folder, an unknown stage, or a stage without a model.
        CheckpointError: the stage's checkpoint is not a plain tensor checkpoint (nothing is written).
    """
    layout = RunLayout(run_dir)
    cfg = read_run_config(layout)
    stage, model_path = stage_model_path(layout, stage)
    # Everything is checked before the first file is written: a refused checkpoint leaves nothing.
    wrapped = ExportedSegmenter(load_model(model_path, "cpu")).eval()
    # TorchScript is deprecated in favour of torch.export, but it is what runs with torch alone.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        example = torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE)
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        probe = torch.rand(2, 3, TRACE_SIZE // 2 + 8, TRACE_SIZE + 24)
        if not torch.allclose(traced(probe), wrapped(probe), atol=1e-4, rtol=1e-4):
            raise RunError("the traced model does not match the original on another input size; not exported")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ModelExport(stage, out / "checkpoint.pt", out / "config.json", out / "model.torchscript.pt",
                        out / "model.json")
    atomic_save(files.checkpoint, lambda tmp: shutil.copyfile(model_path, tmp))
    atomic_save(files.config, lambda tmp: Path(tmp).write_text(cfg.to_json()))
    atomic_save(files.torchscript, lambda tmp: torch.jit.save(traced, tmp))
    info = {
        "stage": stage,
        "classes": list(cfg.data.class_names),
        "palette": [list(c) for c in cfg.data.palette],
        "ignore_index": cfg.data.ignore_index,
        "num_classes": cfg.data.num_classes,
        "model": {"arch": cfg.model.arch, "backbone": cfg.model.backbone, "output_stride": cfg.model.output_stride},
        "config_hash": cfg.config_hash(),
        "torchscript": {"file": files.torchscript.name,
                        "input": "float32 RGB (N, 3, H, W) in [0, 1]; ImageNet normalisation is inside",
                        "output": "logits (N, num_classes, H, W); argmax over dim 1 is the mask",
                        "usage": "torch.jit.load('model.torchscript.pt').eval()(images).argmax(1)"},
        "checkpoint": {"file": files.checkpoint.name,
                       "load": "torch.load('checkpoint.pt', weights_only=True); keys model, config, ..."},
    }
    atomic_save(files.info, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
    return files


def zip_export(files: ModelExport, target: str | Path) -> Path:
    """The exported files in one zip (``model-<stage>/...``), written atomically."""
    target = Path(target)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in (files.info, files.config, files.checkpoint, files.torchscript):
                zf.write(path, f"model-{files.stage}/{path.name}")

    atomic_save(target, write)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.model_export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder to write the files into")
    parser.add_argument("--stage", default=None, help="teacher, st, stage1, stage2, stage3 (default: the last)")
    parser.add_argument("--zip", type=Path, default=None, help="also write the files as one zip here")
    args = parser.parse_args(argv)
    try:
        files = export_model(args.run_dir, args.out, args.stage)
        if args.zip:
            zip_export(files, args.zip)
    except (RunError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"stage": files.stage, "torchscript": str(files.torchscript), "checkpoint": str(files.checkpoint),
                      **({"zip": str(args.zip)} if args.zip else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
