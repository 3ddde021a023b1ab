"""A project run's progress over all of its phases, from the engine's events."""

from __future__ import annotations

from stpp.core.config import StppConfig
from stpp.core.events import Event
from stpp.core.method import labelled_copies, num_reliable, stage_epochs, stage_names, teacher_labels_in_stability_pass
from stpp.selftrain.pipeline import RunData


class RunProgress:
    """Maps pipeline events to the progress over the whole run (0..1).

    The run is split into its phases in order (train, evaluate, stability masks, labelling per
    stage); each phase weighs its estimated compute in pixels through the network (a training step
    counts three passes: forward and backward), so the bar moves about evenly in time.

    Args:
        cfg: the resolved config.
        data: the run's images.
        pixels_per_image: the mean image size (labelling and evaluation run at full resolution).
    """

    def __init__(self, cfg: StppConfig, data: RunData, pixels_per_image: float):
        labelled = len(data.labeled) + len(data.reviewed)
        pool = len(data.pseudo_pool())
        crop = cfg.augment.crop_size ** 2
        tta = sum(s * s for s in cfg.pseudo.tta_scales) * (2 if cfg.pseudo.tta_flip else 1) if cfg.pseudo.tta else 1.0
        label = pixels_per_image * tta
        evaluate = len(data.val) * pixels_per_image

        def train(stage: str, pseudo: int) -> float:
            # The teacher's labelled set is the ground truth alone: reviewed images join from the students on.
            count = len(data.labeled) if stage == "teacher" else labelled
            copies = labelled_copies(cfg, stage, count, pseudo)
            return 3.0 * stage_epochs(cfg, stage) * (count * copies + pseudo) * crop

        phases = [("train:teacher", train("teacher", 0)), ("eval:teacher", evaluate)]
        stability_passes = cfg.pseudo.num_checkpoints
        if cfg.method == "st":
            phases += [("label:teacher", pool * label), ("train:st", train("st", pool)), ("eval:st", evaluate)]
        elif cfg.method == "st++":
            reliable = num_reliable(pool, cfg.selftrain.reliable_ratio)
            if teacher_labels_in_stability_pass(cfg):
                # The last checkpoint's pass is the teacher's labelling: it counts there, not as stability.
                stability_passes -= 1
            # Without TTA the teacher's labels are copies of the last stability masks.
            teacher_label = pool * label if cfg.pseudo.tta or cfg.selftrain.pixel_threshold > 0 else 0.05 * pool * label
            phases += [("stability", stability_passes * pool * pixels_per_image),
                       ("label:teacher", teacher_label),
                       ("train:stage1", train("stage1", reliable)), ("eval:stage1", evaluate),
                       ("label:stage1", (pool - reliable) * label),
                       ("train:stage2", train("stage2", pool)), ("eval:stage2", evaluate)]
            if cfg.selftrain.stage3:
                phases += [("label:stage2", pool * label), ("train:stage3", train("stage3", pool)),
                           ("eval:stage3", evaluate)]
        total = sum(cost for _, cost in phases) or 1.0
        self.start: dict[str, float] = {}
        self.share: dict[str, float] = {}
        done = 0.0
        for key, cost in phases:
            self.start[key], self.share[key] = done / total, cost / total
            done += cost
        self.stability_passes = stability_passes
        # The ranking comes after the teacher's labels when the last stability pass wrote them.
        self.ranking_ends = "label:teacher" if stability_passes < cfg.pseudo.num_checkpoints else "stability"
        self.train_stages = set(stage_names(cfg))

    def __call__(self, event: Event) -> float | None:
        if event.kind == "run_end":
            return 1.0
        place = self._place(event)
        if place is None:
            return None
        key, fraction = place
        if key not in self.start:
            return None
        return self.start[key] + self.share[key] * min(1.0, max(0.0, fraction))

    def _place(self, event: Event) -> tuple[str, float] | None:
        activity, kind = event.activity, event.kind
        if activity is None:
            return None
        fraction = (event.step or 0) / event.total if event.total else 0.0
        if activity.kind == "stage" and activity.stage in self.train_stages:
            if kind in ("step", "epoch", "checkpoint"):
                return f"train:{activity.stage}", fraction
            if kind in ("stage_end", "stage_skipped"):
                return f"train:{activity.stage}", 1.0
            if kind == "eval_progress":
                return f"eval:{activity.stage}", fraction
            if kind == "eval":
                return f"eval:{activity.stage}", 1.0
        if kind == "labels" and activity.labelled_stage:
            return f"label:{activity.labelled_stage}", fraction
        if kind == "labels" and activity.kind == "stability":
            return "stability", (activity.checkpoint - 1 + fraction) / self.stability_passes
        if activity.kind == "ranking":
            return self.ranking_ends, 1.0
        return None


class ProgressTracker:
    """An event sink that keeps the run's progress (never going back) for the worker's status file.

    Args:
        progress: maps an event to the progress over the whole run, or None when it says nothing new.
        start: the progress when this worker started (a continued run goes on from there, while its
            finished stages are passed again).
    """

    def __init__(self, progress: RunProgress, start: float = 0.0):
        self.progress_of = progress
        self.progress = float(start)

    def emit(self, event: Event) -> None:
        progress = self.progress_of(event)
        if progress is not None:
            self.progress = max(self.progress, min(1.0, progress))
