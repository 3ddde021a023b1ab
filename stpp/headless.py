"""Headless runs: a folder dataset and split lists in, a complete run folder out.

The CLI's ``run``, ``eval`` and ``predict`` are thin wrappers over these functions; the app's
worker builds :class:`~stpp.selftrain.pipeline.RunData` from the store instead and calls the same
:class:`~stpp.selftrain.pipeline.Pipeline`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from stpp import __version__
from stpp.core import resolve
from stpp.core.config import ConfigError, StppConfig
from stpp.core.events import Activity, Event, EventSink, JsonlSink, MultiSink
from stpp.core.handoff import only_handoff
from stpp.core.layout import PREDICTION_MANIFEST, RunLayout
from stpp.core.masks import IMAGE_SUFFIXES, atomic_save
from stpp.data.cityscapes import CityscapesDataset
from stpp.data.datasets import (
    ClassInfo,
    DataError,
    EvalDataset,
    FolderDataset,
    check_run_inputs,
    image_size,
    read_split,
)
from stpp.data.voc import VOCDataset
from stpp.engine.checkpoint import load_model
from stpp.engine.distributed import is_main
from stpp.engine.train import evaluate
from stpp.models import build_model
from stpp.selftrain.pipeline import Pipeline, RunData, Sample, stage_names
from stpp.selftrain.pseudo import LabelJob, run_label_jobs

DATASET_READERS = {
    "folder": FolderDataset.open,
    "voc": VOCDataset.open,
    "cityscapes": CityscapesDataset.open,
}
"""``--data KIND:ROOT`` readers; a plain path is a folder dataset."""


class RunError(ValueError):
    """A run that cannot start or continue as asked (the message says why and what to do)."""


def resolve_config(preset: str, method: str, overrides: Sequence[str] = (), device: str | None = None,
                   classes: ClassInfo | None = None) -> StppConfig:
    """:func:`stpp.core.resolve.resolve_config`, then :func:`validate_config`'s model check."""
    cfg = resolve.resolve_config(preset, method, overrides, device, classes)
    validate_config(cfg)
    return cfg


def validate_config(cfg: StppConfig) -> None:
    """Refuse, before anything is written, a config the engine cannot run.

    Checks what :func:`stpp.core.resolve.check_config` checks, then builds the model once, so a
    weights file that is missing or does not fit its backbone fails here.
    """
    resolve.check_config(cfg)
    try:
        build_model(cfg.model, max(1, cfg.data.num_classes))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def parse_data_spec(spec: str | Path) -> tuple[str, Path]:
    """``(kind, root)`` of a ``--data`` value: ``voc:ROOT``, ``cityscapes:ROOT``, ``folder:ROOT`` or a path."""
    text = str(spec)
    kind, sep, rest = text.partition(":")
    if sep and kind in DATASET_READERS and rest:
        return kind, Path(rest)
    return "folder", Path(text)


def open_dataset(spec: str | Path) -> FolderDataset:
    """Open the dataset a ``--data`` value names (see :func:`parse_data_spec`).

    Every reader gives the folder reader's interface: IDs, image and mask paths (masks holding class
    indices, 255 = ignore), classes, and a ``read_split`` for its split-file format.

    Raises:
        DataError: the folder does not hold that kind of dataset.
    """
    kind, root = parse_data_spec(spec)
    return DATASET_READERS[kind](root)


def load_folder_run_data(root: str | Path, labeled_file: Path, unlabeled_file: Path | None,
                         val_file: Path | None = None) -> RunData:
    """Read and validate a dataset (a folder or a ``KIND:ROOT`` spec) and its split lists.

    Raises:
        DataError: naming the file or ID and the problem.
    """
    dataset = open_dataset(root)
    classes = dataset.classes
    ids = check_run_inputs(dataset, labeled_file, unlabeled_file or [], val_file, classes.num_classes,
                           classes.ignore_index)
    return RunData(
        classes=classes,
        labeled=tuple(Sample(i, dataset.image_path(i), dataset.mask_path(i)) for i in ids.labeled),
        unlabeled=tuple(Sample(i, dataset.image_path(i)) for i in ids.unlabeled),
        val=tuple(Sample(i, dataset.image_path(i), dataset.mask_path(i)) for i in ids.val),
    )


def describe_inputs(data_root: Path, data: RunData) -> dict:
    """What a run was started on, saved as ``inputs.json`` and compared on ``--resume``."""
    kind, root = parse_data_spec(data_root)
    where = str(root.resolve())
    return {
        "data": where if kind == "folder" else f"{kind}:{where}",
        "labeled": [s.id for s in data.labeled],
        "unlabeled": [s.id for s in data.unlabeled],
        "val": [s.id for s in data.val],
    }


def check_run_dir(out: Path, cfg: StppConfig, inputs: dict, resume: bool) -> None:
    """Check, writing nothing, that ``out`` is new, empty, or this run's folder continued with ``resume``.

    Raises:
        RunError: ``out`` holds another run's config (or a different config/inputs under
            ``resume``), or is a non-empty folder that is not a run.
    """
    layout = RunLayout(out)
    if layout.config_path.exists():
        if not resume:
            raise RunError(f"{out} already holds a run (config.json); pass --resume to continue it, "
                           "or choose another --out")
        # Read through the config class, so keys an older stpp did not write compare as their legacy values.
        saved = json.loads(read_run_config(layout).to_json())
        differences = _differences(saved, json.loads(cfg.to_json()), ignore={"device"})
        if differences:
            raise RunError(f"--resume: the config differs from {layout.config_path}: " + "; ".join(differences))
        if layout.inputs_path.exists() and json.loads(layout.inputs_path.read_text()) != inputs:
            raise RunError(f"--resume: the data or split lists differ from those in {layout.inputs_path}")
    elif out.exists() and (not out.is_dir() or not only_handoff([p.name for p in out.iterdir()])):
        raise RunError(f"{out} exists and is not an stpp run folder; choose an empty or new --out")


def prepare_run_dir(out: Path, cfg: StppConfig, inputs: dict, resume: bool) -> RunLayout:
    """Create the run folder, or check that the one there is this run, continued with ``resume``.

    The caller holds the folder's :class:`~stpp.core.runlock.RunFolderLock` (its file is no content),
    and may have called :func:`check_run_dir` before taking it, so that a refused ``out`` gets no lock file.

    Raises:
        RunError: as :func:`check_run_dir`.
    """
    check_run_dir(out, cfg, inputs, resume)
    layout = RunLayout(out)
    if layout.config_path.exists():
        return layout
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(layout.inputs_path, lambda tmp: Path(tmp).write_text(json.dumps(inputs, indent=2)))
    atomic_save(layout.config_path, lambda tmp: Path(tmp).write_text(cfg.to_json()))
    return layout


def _differences(saved: dict, current: dict, ignore: set[str], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, set(), prefix=f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return found


def run_headless(cfg: StppConfig, data: RunData, layout: RunLayout, device: torch.device,
                 sink: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                 notes: Sequence[Event] = (), pause_after: str | None = None) -> dict:
    """Run the pipeline into ``layout``, recording events in ``events.jsonl`` (plus ``sink``).

    Under ``torchrun`` every rank calls it; only rank 0 writes ``events.jsonl``.

    Args:
        notes: events to record before the run starts (e.g. what ``--auto-batch`` decided).
        pause_after: stop for review there (see :meth:`Pipeline.run`).
    """
    sinks = ([JsonlSink(layout.events_path)] if is_main() else []) + ([sink] if sink is not None else [])
    combined = MultiSink(sinks)
    if is_main():
        for note in notes:
            combined.emit(note)
    return Pipeline(cfg, data, layout, device, combined, should_stop).run(pause_after)


def last_stage(layout: RunLayout) -> str:
    """The last stage of the run's method whose model exists."""
    cfg = read_run_config(layout)
    done = [s for s in stage_names(cfg) if layout.model_path(s, cfg.pseudo.num_checkpoints).exists()]
    if not done:
        raise RunError(f"{layout.root} has no trained model yet")
    return done[-1]


def read_run_config(layout: RunLayout) -> StppConfig:
    """The resolved config of a run folder."""
    if not layout.config_path.exists():
        raise RunError(f"{layout.root} is not an stpp run folder (no config.json)")
    return StppConfig.from_dict(json.loads(layout.config_path.read_text()))


def stage_model_path(layout: RunLayout, stage: str | None) -> tuple[str, Path]:
    """(stage, model path) for ``stage`` or, when None, the run's last finished stage."""
    cfg = read_run_config(layout)
    stage = stage or last_stage(layout)
    valid = stage_names(cfg)
    if stage not in valid:
        raise RunError(f"unknown stage {stage!r} for a {cfg.method} run; choose one of: {', '.join(valid)}")
    path = layout.model_path(stage, cfg.pseudo.num_checkpoints)
    if not path.exists():
        raise RunError(f"stage {stage} has no model yet ({path} is missing)")
    return stage, path


def evaluate_run(layout: RunLayout, data_root: Path, split_file: Path, stage: str | None,
                 device: torch.device, sink: EventSink | None = None) -> dict:
    """Evaluate a run's stage model on a split; writes ``eval/<stage>-<split>.json`` and returns it."""
    cfg = read_run_config(layout)
    stage, model_path = stage_model_path(layout, stage)
    dataset = open_dataset(data_root)
    ids = getattr(dataset, "read_split", read_split)(split_file)
    if dataset.classes.num_classes != cfg.data.num_classes:
        raise DataError(f"{data_root}: {dataset.classes.num_classes} classes, but the run was trained on "
                        f"{cfg.data.num_classes}")
    check_run_inputs(dataset, [], [], ids, cfg.data.num_classes, cfg.data.ignore_index, require_labeled=False)
    model = load_model(model_path, device)
    eval_set = EvalDataset(ids, [dataset.image_path(i) for i in ids], [dataset.mask_path(i) for i in ids])
    matrix = evaluate(model, eval_set, cfg.data.num_classes, device, cfg, sink, stage)
    result = {"stage": stage, "split": str(split_file), "images": len(ids), **matrix.summary(cfg.data.class_names)}
    target = layout.root / "eval" / f"{stage}-{Path(split_file).stem}.json"
    if is_main():
        atomic_save(target, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    return result


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted)."""
    if not folder.is_dir():
        raise RunError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@torch.inference_mode()
def predict_folder(layout: RunLayout, images_dir: Path, out_dir: Path, stage: str | None, tta: bool | None,
                   device: torch.device, sink: EventSink | None = None) -> list[Path]:
    """Write a palette-PNG mask for every image under ``images_dir``, named like the image (``.png``).

    The output keeps the input's sub-folders, so equal stems in different folders do not collide.
    Images are labelled as the pipeline labels them (same-size batches, batched TTA). Beside the
    masks, ``manifest.json`` says what made them (:data:`PREDICTION_MANIFEST`).
    """
    cfg = read_run_config(layout)
    stage, model_path = stage_model_path(layout, stage)
    images = list_images(images_dir)
    if not images:
        raise RunError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_dir}")
    for path in images:
        image_size(path)  # an unreadable image fails here, with its path, before any work
    model = load_model(model_path, device)
    use_tta = cfg.pseudo.tta if tta is None else tta
    jobs = [LabelJob(path.stem, path, out_dir / path.relative_to(images_dir).with_suffix(".png")) for path in images]
    run_label_jobs(model, jobs, cfg, cfg.data.palette, device, sink if sink is not None else MultiSink([]),
                   Activity.prediction(stage), use_tta, skip_existing=False)
    manifest = {"stpp_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "run_dir": str(layout.root.resolve()), "method": cfg.method, "preset": cfg.preset,
                "config_hash": cfg.config_hash(), "stage": stage, "model_checkpoint": str(model_path.resolve()),
                "tta": use_tta, "classes": list(cfg.data.class_names),
                "masks": {str(job.target.relative_to(out_dir)): str(job.image_path.relative_to(images_dir))
                          for job in jobs}}
    atomic_save(out_dir / PREDICTION_MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return [job.target for job in jobs]
