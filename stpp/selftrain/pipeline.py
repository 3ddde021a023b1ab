"""The SupOnly / ST / ST++ phase sequence as small stages that skip what is already on disk.

Each stage reads its inputs from the run folder (or the data) and writes its outputs there; a
killed run re-run with the same inputs continues where it stopped (``fit`` resumes mid-stage from
``last.pt``). Nothing is handed between stages in memory.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from stpp.core.config import StppConfig
from stpp.core.events import Activity, Event, EventSink, NullSink
from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save, read_mask
from stpp.core.method import (
    RANKING,
    STAGES,
    labelled_copies,
    pause_points,
    scaled_lr,
    snapshot_epochs,
    stage_epochs,
    stage_names,
    teacher_labels_in_stability_pass,
)
from stpp.data.datasets import ClassInfo, EvalDataset, TrainDataset, TrainItem
from stpp.data.transforms import StrongAugment, WeakAugment
from stpp.engine.checkpoint import fingerprint, load_model
from stpp.engine.device import peak_memory_mb, reset_peak_memory, seed_everything
from stpp.engine.distributed import barrier, broadcast_from_main, is_main, max_over_ranks, run_on_main, world_size
from stpp.engine.train import FitPlan, evaluate, fit, global_batch_size, process_batch_size
from stpp.models import build_model
from stpp.selftrain.pseudo import label_images
from stpp.selftrain.stability import ImageScore, rank_images


@dataclass(frozen=True)
class Sample:
    """One image and, where it has one, the mask a stage may train or evaluate on."""

    id: str
    image_path: Path
    mask_path: Path | None = None


@dataclass(frozen=True)
class RunData:
    """Everything a run reads, as explicit lists.

    Attributes:
        classes: names, palette, ignore index.
        labeled: images with ground-truth masks.
        unlabeled: images without (their masks are never read, even where the data has one).
        val: validation images with masks; empty when no validation set is given.
        reviewed: unlabelled images a person accepted or corrected, with the reviewed mask: they
            train as labelled images from the next stage on and are never re-labelled.
        rejected: unlabelled images a person rejected: they leave every later stage.
    """

    classes: ClassInfo
    labeled: tuple[Sample, ...]
    unlabeled: tuple[Sample, ...]
    val: tuple[Sample, ...] = ()
    reviewed: tuple[Sample, ...] = ()
    rejected: frozenset[str] = field(default_factory=frozenset)

    def pseudo_pool(self) -> tuple[Sample, ...]:
        """The unlabelled images that get pseudo masks: not reviewed, not rejected."""
        taken = {s.id for s in self.reviewed} | set(self.rejected)
        return tuple(s for s in self.unlabeled if s.id not in taken)


@dataclass(frozen=True)
class TrainSource:
    """One image of a stage's training set and where its mask comes from."""

    sample: Sample
    source: str  # ground_truth, reviewed, pseudo:<stage>
    mask_path: Path

    @property
    def is_pseudo(self) -> bool:
        return self.source.startswith("pseudo:")


PAUSED = "paused_after"
"""Key of :meth:`Pipeline.run`'s result naming where a run stopped for review."""


class Pipeline:
    """Runs the stages of ``cfg.method`` for one run folder.

    Under ``torchrun`` every rank runs the same sequence: training is data-parallel, labelling and
    evaluation are sharded, decisions read from the run folder are rank 0's, and only rank 0
    writes run files and events (the sink is silenced on the other ranks).

    Args:
        cfg: the resolved config (``data`` filled in).
        data: the run's images.
        layout: the run folder.
        device: where to train and label.
        sink: receives every event.
        should_stop: polled during training; see :func:`stpp.engine.train.fit`.
    """

    def __init__(self, cfg: StppConfig, data: RunData, layout: RunLayout, device: torch.device,
                 sink: EventSink, should_stop: Callable[[], bool] | None = None):
        self.cfg = cfg
        self.data = data
        self.layout = layout
        self.device = device
        self.sink = sink if is_main() else NullSink()
        self.should_stop = should_stop

    # The sequence --------------------------------------------------------------------------

    def run(self, pause_after: str | None = None) -> dict:
        """Run (or finish) every stage; returns the metrics per stage.

        Args:
            pause_after: stop for a person's review after ``ranking`` (teacher trained, stability
                ranked, teacher labels written), ``stage1`` (stage 1 trained, unreliable images
                re-labelled) or ``stage2`` (trained and every image re-labelled, before stage 3);
                the returned dict then holds :data:`PAUSED` with that point. A later ``run``
                continues from the files.
        """
        cfg = self.cfg
        if pause_after is not None and pause_after not in pause_points(cfg):
            raise ValueError(f"a {cfg.method} run cannot pause after {pause_after!r}; "
                             f"choose one of: {', '.join(pause_points(cfg)) or 'none'}")
        self.sink.emit(Event("run_start", message=f"{cfg.method} with preset {cfg.preset} on {self.device}",
                             data={"stages": list(stage_names(cfg))}))
        self.train_teacher()
        if cfg.method != "supervised":
            pool = self.data.pseudo_pool()
            if cfg.method == "st++":
                self.write_stability_masks(pool)
                scores = self.rank_stability(pool)
            self.pseudo_label_with_teacher(pool)
            if pause_after == RANKING:
                return self._pause(RANKING)
            teacher_labels = self._pseudo_sources(pool, "teacher")
            if cfg.method == "st":
                self.train_student("st", teacher_labels)
            else:
                reliable_ids = {s.image_id for s in scores if s.reliable}
                reliable = [t for t in teacher_labels if t.sample.id in reliable_ids]
                unreliable = [s for s in pool if s.id not in reliable_ids]
                self.train_student("stage1", reliable)
                self.relabel("stage1", unreliable)
                if pause_after == "stage1":
                    return self._pause("stage1")
                self.train_student("stage2", reliable + self._pseudo_sources(unreliable, "stage1"))
                if cfg.selftrain.stage3:
                    self.relabel("stage2", pool)
                    if pause_after == "stage2":
                        return self._pause("stage2")
                    self.train_student("stage3", self._pseudo_sources(pool, "stage2"))
        metrics = self.read_metrics()
        self.sink.emit(Event("run_end", message="run complete", data={"metrics": _brief(metrics)}))
        return metrics

    def _pause(self, point: str) -> dict:
        self.sink.emit(Event("paused", point, message=f"paused after {point} for review"))
        return {**self.read_metrics(), PAUSED: point}

    # Stages --------------------------------------------------------------------------------

    def train_teacher(self) -> list[Path]:
        """Train T on the labelled set; K checkpoints at E//K·j. Skipped when all K exist."""
        k = self.cfg.pseudo.num_checkpoints
        epochs = stage_epochs(self.cfg, "teacher")
        paths = [self.layout.teacher_checkpoint(j) for j in range(1, k + 1)]
        sources = [TrainSource(s, "ground_truth", s.mask_path) for s in self.data.labeled]
        if not broadcast_from_main(all(p.exists() for p in paths)):
            plan = FitPlan("teacher", epochs, dict(zip(snapshot_epochs(epochs, k), paths)), self.layout.last_path,
                           shards_path=self.layout.shards_path, last_every=self._last_every())
            self._train("teacher", sources, plan)
        else:
            self._skip("teacher", "its K checkpoints exist")
        self.evaluate_stage("teacher")
        return paths

    def write_stability_masks(self, pool: Sequence[Sample]) -> None:
        """Single-scale masks of every pool image from each teacher checkpoint, one model in memory at a time.

        Each checkpoint is one batched pass over the pool. When the teacher's labels differ from its
        single-scale masks (TTA or pixel selection), the K-th checkpoint's pass also writes them:
        its scale-1 view is both the stability mask and one of the TTA views.
        """
        k = self.cfg.pseudo.num_checkpoints
        ids, paths = [s.id for s in pool], [s.image_path for s in pool]
        for j in range(1, k + 1):
            model = self._load_model(self.layout.teacher_checkpoint(j))
            if j == k and teacher_labels_in_stability_pass(self.cfg):
                label_images(model, ids, paths, self.layout.pseudo_dir("teacher"), self.cfg,
                             self.data.classes.palette, self.device, self.sink, Activity.stability(j, labels_too=True),
                             tta=self.cfg.pseudo.tta, pixel_threshold=self.cfg.selftrain.pixel_threshold,
                             single_scale_dir=self.layout.stability_dir(j), shards_path=self.layout.shards_path)
            else:
                label_images(model, ids, paths, self.layout.stability_dir(j), self.cfg, self.data.classes.palette,
                             self.device, self.sink, Activity.stability(j), tta=False,
                             shards_path=self.layout.shards_path)
            del model

    def rank_stability(self, pool: Sequence[Sample]) -> list[ImageScore]:
        """Score and rank the pool from the stability masks; writes ``scores.csv`` (kept on resume)."""
        return run_on_main(lambda: self._rank_stability(pool))

    def _rank_stability(self, pool: Sequence[Sample]) -> list[ImageScore]:
        if self.layout.scores_path.exists():
            self._skip(Activity.ranking(), "scores.csv exists")
            return read_scores(self.layout.scores_path)
        k = self.cfg.pseudo.num_checkpoints
        scores = rank_images(
            [s.id for s in pool],
            lambda image_id: [read_mask(self.layout.stability_dir(j) / f"{image_id}.png") for j in range(1, k + 1)],
            self.data.classes.num_classes,
            self.cfg.selftrain.reliable_ratio,
            split=self.cfg.selftrain.split,
            seed=self.cfg.seed,
        )
        write_scores(self.layout.scores_path, scores)
        reliable = sum(s.reliable for s in scores)
        self.sink.emit(Event("ranking", Activity.ranking(), step=len(scores), total=len(scores),
                             message=f"{reliable} of {len(scores)} images reliable",
                             data={"reliable": reliable, "unreliable": len(scores) - reliable}))
        return scores

    def pseudo_label_with_teacher(self, pool: Sequence[Sample]) -> None:
        """The final teacher labels the pool (TTA per config) into ``pseudo/teacher``.

        Without TTA or pixel selection, the K-th checkpoint's single-scale stability masks are the
        same labels, so they are reused instead of predicted again.
        """
        out_dir = self.layout.pseudo_dir("teacher")
        k = self.cfg.pseudo.num_checkpoints
        reusable = self.layout.stability_dir(k)
        if (is_main() and not self.cfg.pseudo.tta and self.cfg.selftrain.pixel_threshold <= 0
                and reusable.is_dir()):
            out_dir.mkdir(parents=True, exist_ok=True)
            for sample in pool:
                target = out_dir / f"{sample.id}.png"
                source = reusable / f"{sample.id}.png"
                if not target.exists() and source.exists():
                    atomic_save(target, lambda tmp, src=source: Path(tmp).write_bytes(src.read_bytes()))
        barrier()
        self.relabel("teacher", pool)

    def relabel(self, stage: str, samples: Sequence[Sample]) -> None:
        """Label ``samples`` with the final model of ``stage`` into ``pseudo/<stage>`` (existing masks kept)."""
        model_path = self.layout.model_path(stage, self.cfg.pseudo.num_checkpoints)
        out_dir = self.layout.pseudo_dir(stage)
        if broadcast_from_main(all((out_dir / f"{s.id}.png").exists() for s in samples)):
            return
        model = self._load_model(model_path)
        label_images(model, [s.id for s in samples], [s.image_path for s in samples], out_dir, self.cfg,
                     self.data.classes.palette, self.device, self.sink, Activity.labelling(stage), tta=self.cfg.pseudo.tta,
                     pixel_threshold=self.cfg.selftrain.pixel_threshold, shards_path=self.layout.shards_path)

    def train_student(self, stage: str, pseudo: Sequence[TrainSource]) -> Path:
        """A freshly initialised student on labelled (+ reviewed) ∪ ``pseudo``; skipped when its model exists."""
        path = self.layout.model_path(stage, self.cfg.pseudo.num_checkpoints)
        labeled = [TrainSource(s, "ground_truth", s.mask_path) for s in self.data.labeled]
        labeled += [TrainSource(s, "reviewed", s.mask_path) for s in self.data.reviewed]
        if broadcast_from_main(path.exists()):
            self._skip(stage, f"{path.name} exists")
        else:
            epochs = stage_epochs(self.cfg, stage)
            plan = FitPlan(stage, epochs, {epochs: path}, self.layout.last_path,
                           shards_path=self.layout.shards_path, last_every=self._last_every())
            self._train(stage, labeled + list(pseudo), plan)
        self.evaluate_stage(stage)
        return path

    def evaluate_stage(self, stage: str) -> None:
        """Validation mIoU of a stage's final model into ``metrics.json`` (once; sharded under DDP)."""
        metrics = self.read_metrics()
        if broadcast_from_main(stage in metrics["stages"]):
            return
        if not self.data.val:
            metrics["stages"][stage] = None
        else:
            model = self._load_model(self.layout.model_path(stage, self.cfg.pseudo.num_checkpoints))
            dataset = EvalDataset([s.id for s in self.data.val], [s.image_path for s in self.data.val],
                                  [s.mask_path for s in self.data.val])
            matrix = evaluate(model, dataset, self.data.classes.num_classes, self.device, self.cfg, self.sink, stage,
                              shards_path=self.layout.shards_path)
            metrics["stages"][stage] = matrix.summary(self.data.classes.names)
            self.sink.emit(Event("eval", stage, miou=metrics["stages"][stage]["miou"],
                                 message=f"{stage}: val mIoU {metrics['stages'][stage]['miou']:.2f}"))
        if is_main():
            atomic_save(self.layout.metrics_path, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        barrier()

    def read_metrics(self) -> dict:
        """``metrics.json`` as a dict (a fresh one before the first evaluation)."""
        if self.layout.metrics_path.exists():
            return json.loads(self.layout.metrics_path.read_text())
        note = None if self.data.val else "no validation set was given: stages are not evaluated"
        return {"validation": bool(self.data.val), "note": note, "stages": {}}

    # Helpers -------------------------------------------------------------------------------

    def _train(self, stage: str, sources: Sequence[TrainSource], plan: FitPlan) -> None:
        cfg = self.cfg
        num_pseudo = sum(s.is_pseudo for s in sources)
        copies = labelled_copies(cfg, stage, len(sources) - num_pseudo, num_pseudo)
        if is_main():
            write_train_set(self.layout.train_set_path(stage), sources, copies)
        items = _train_items(sources, cfg, copies)
        # A student is re-initialised, never the teacher's continuation; the events record both
        # fingerprints to prove it.
        model = initial_model(cfg, stage, self.data.classes.num_classes)
        if not model.pretrained_loaded:
            self.sink.emit(Event("warning", stage, message=f"WARNING: {model.weights_note}"))
        self.sink.emit(Event("stage_start", stage, total=plan.epochs, message=f"training {stage} on {len(items)} items",
                             data={"init_fingerprint": fingerprint(model), "weights": model.weights_note,
                                   "items": len(items), "epochs": plan.epochs, "world_size": world_size(),
                                   "batch_size": global_batch_size(cfg), "batch_per_process": process_batch_size(cfg),
                                   "lr": scaled_lr(cfg.optim.base_lr, global_batch_size(cfg))}))
        dataset = TrainDataset(items, WeakAugment(cfg.augment, cfg.data.ignore_index),
                               StrongAugment(cfg.augment, cfg.data.ignore_index))
        seed = cfg.seed + 1000 * (STAGES.index(stage) + 1)
        seed_everything(seed)
        reset_peak_memory(self.device)
        fit(model, dataset, cfg, plan, self.device, self.sink, seed, self.should_stop)
        end = {"final_fingerprint": fingerprint(model)}
        peak = max_over_ranks(peak_memory_mb(self.device))
        if peak is not None:
            end["peak_memory_mb"] = peak
        self.sink.emit(Event("stage_end", stage, message=f"{stage} trained", data=end))

    def _last_every(self) -> int:
        return max(1, self.cfg.optim.last_every)

    def _pseudo_sources(self, samples: Sequence[Sample], stage: str) -> list[TrainSource]:
        out_dir = self.layout.pseudo_dir(stage)
        return [TrainSource(s, f"pseudo:{stage}", out_dir / f"{s.id}.png") for s in samples]

    def _load_model(self, path: Path) -> torch.nn.Module:
        return load_model(path, self.device)

    def _skip(self, stage: str | Activity, why: str) -> None:
        self.sink.emit(Event("stage_skipped", stage, message=f"{stage} skipped: {why}"))


def initial_model(cfg: StppConfig, stage: str, num_classes: int) -> torch.nn.Module:
    """The model ``stage`` starts from, built under a seed of its own.

    The seed is ``cfg.seed`` plus the stage's index in :data:`STAGES` times
    ``selftrain.init_seed_stride`` (the teacher's is the run's seed), so each stage draws a fresh random
    head, runs of nearby seeds draw different ones, and a rerun or a resumed stage draws the same one.
    With ``selftrain.fresh_init`` off every stage is built under ``cfg.seed``: the same weights.
    """
    stride = cfg.selftrain.init_seed_stride if cfg.selftrain.fresh_init else 0
    seed_everything(cfg.seed + stride * STAGES.index(stage))
    return build_model(cfg.model, num_classes)


def _train_items(sources: Sequence[TrainSource], cfg: StppConfig, copies: int) -> list[TrainItem]:
    items = []
    for src in sources:
        if src.is_pseudo:
            items.append(TrainItem(src.sample.id, src.sample.image_path, src.mask_path, cfg.augment.strong_unlabeled))
        else:
            items += [TrainItem(src.sample.id, src.sample.image_path, src.mask_path, cfg.augment.strong_labeled)] * copies
    return items


def write_train_set(path: Path, sources: Sequence[TrainSource], labeled_copies: int) -> None:
    """``stages/<stage>/train_set.csv``: ``id,source,copies,mask`` for every distinct image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "source", "copies", "mask"])
    for src in sources:
        writer.writerow([src.sample.id, src.source, 1 if src.is_pseudo else labeled_copies, str(src.mask_path)])
    atomic_save(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def write_scores(path: Path, scores: Sequence[ImageScore]) -> None:
    """``scores.csv``: ``id,stability,reliable,rank`` then one agreement column per earlier checkpoint."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    k_minus_1 = len(scores[0].per_checkpoint) if scores else 0
    writer.writerow(["id", "stability", "reliable", "rank"] + [f"ckpt{j}_miou" for j in range(1, k_minus_1 + 1)])
    for s in scores:
        writer.writerow([s.image_id, f"{s.stability:.6f}", int(s.reliable), s.rank]
                        + ["" if np.isnan(v) else f"{v:.6f}" for v in s.per_checkpoint])
    atomic_save(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def read_scores(path: Path) -> list[ImageScore]:
    """Read a ``scores.csv`` written by :func:`write_scores`, in rank order."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = []
    for row in rows:
        per_ckpt = tuple(float(row[k]) if row[k] else float("nan") for k in row if k.endswith("_miou"))
        scores.append(ImageScore(row["id"], float(row["stability"]), per_ckpt, int(row["rank"]), row["reliable"] == "1"))
    return sorted(scores, key=lambda s: s.rank)


def _brief(metrics: dict) -> dict:
    return {stage: (m or {}).get("miou") for stage, m in metrics.get("stages", {}).items()}
