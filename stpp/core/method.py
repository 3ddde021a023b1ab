"""The method's vocabulary: methods, training stages, pause points, the reliable count and the lr rule.

The engine runs these stages and the app shows, orders and pauses them: both read them from here.
"""

from __future__ import annotations

import math

from stpp.core.config import METHODS, SelfTrainConfig, StppConfig

METHOD_LABELS = {"supervised": "SupOnly", "st": "ST", "st++": "ST++"}
"""What people read for each method."""
STAGES = ("teacher", "st", "stage1", "stage2", "stage3")
"""Every training stage, in the order a run reaches them (``st`` is ST's one student)."""
RANKING = "ranking"
"""The pause point after the teacher's labels and the stability ranking."""


def stage_names(cfg: StppConfig) -> tuple[str, ...]:
    """The training stages of ``cfg.method``, in order.

    Raises:
        ValueError: an unknown method.
    """
    if cfg.method == "supervised":
        return ("teacher",)
    if cfg.method == "st":
        return ("teacher", "st")
    if cfg.method == "st++":
        return ("teacher", "stage1", "stage2") + (("stage3",) if cfg.selftrain.stage3 else ())
    raise ValueError(f"unknown method {cfg.method!r}; choose one of: {', '.join(METHODS)}")


def pause_points(cfg: StppConfig) -> tuple[str, ...]:
    """Where a run of this config can stop for review, in order (none for SupOnly).

    ``ranking``: teacher trained, stability ranked (ST++), teacher labels written; ``stage1``: stage 1
    trained and the unreliable images re-labelled; ``stage2``: stage 2 trained and every image
    re-labelled, before stage 3.
    """
    stages = stage_names(cfg)
    if len(stages) == 1:
        return ()
    # After the teacher's labels, then after each student that labels for the next (not the last).
    return (RANKING,) + stages[1:-1]


def every_pause_point() -> tuple[str, ...]:
    """Every pause point of any method, in run order (the choices before a config is known)."""
    configs = [StppConfig(method=method, selftrain=SelfTrainConfig(stage3=True)) for method in METHODS]
    return tuple(dict.fromkeys(point for cfg in configs for point in pause_points(cfg)))


def stage_after_pause(cfg: StppConfig, pause: str) -> str:
    """The training stage a run paused at ``pause`` trains next.

    Raises:
        ValueError: ``pause`` is not a pause point of this config.
    """
    points = pause_points(cfg)
    if pause not in points:
        raise ValueError(f"a {cfg.method} run cannot pause after {pause!r}; "
                         f"choose one of: {', '.join(points) or 'none'}")
    return stage_names(cfg)[points.index(pause) + 1]


def teacher_labels_in_stability_pass(cfg: StppConfig) -> bool:
    """Whether ST++'s last stability pass (teacher checkpoint K) also writes the teacher's labels.

    It does when those labels differ from checkpoint K's single-scale masks (TTA or pixel selection) and
    one pass gives both (no TTA, or scale 1 among the TTA views: that view is the single-scale mask).
    Without TTA and pixel selection the labels are copies of those masks.
    """
    pseudo = cfg.pseudo
    differs = pseudo.tta or cfg.selftrain.pixel_threshold > 0
    return differs and (not pseudo.tta or 1.0 in pseudo.tta_scales)


def stage_order(stage: str | None) -> tuple[int, str]:
    """A sort key of stages in the order of :data:`STAGES` (unknown stages last, by name)."""
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), stage or "")


def num_reliable(count: int, ratio: float) -> int:
    """floor(N x R): how many of ``count`` ranked images are reliable at ratio R."""
    return int(math.floor(count * float(ratio) + 1e-9))


def labelled_copies(cfg: StppConfig, stage: str, num_labelled: int, num_pseudo: int) -> int:
    """How many times each labelled image appears in one epoch of ``stage``.

    The teacher: twice when it has fewer than ``optim.teacher_double_below`` images (the paper's
    code doubles a list under 200), else once. A student: ceil(|pseudo| / |labelled|), at least once,
    so the labelled images weigh about as much as the pseudo-labelled ones.
    """
    if stage == "teacher":
        return 2 if num_labelled < cfg.optim.teacher_double_below else 1
    if num_pseudo == 0 or num_labelled == 0:
        return 1
    return max(1, math.ceil(num_pseudo / num_labelled))


def stage_epochs(cfg: StppConfig, stage: str) -> int:
    """The epochs ``stage`` trains: ``optim.epochs`` for the teacher, :attr:`StppConfig.student_epochs` after."""
    return cfg.optim.epochs if stage == "teacher" else cfg.student_epochs


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The backbone's learning rate: ``base_lr`` is set for batch 16 and scales linearly with the batch."""
    return base_lr * batch_size / 16


def snapshot_epochs(epochs: int, k: int) -> list[int]:
    """The epochs after which the K teacher checkpoints are taken: E//K·j (the paper: E//3, 2E//3, E)."""
    if epochs < 1 or k < 1:
        raise ValueError("epochs and the number of checkpoints must be at least 1")
    return [max(1, epochs * j // k) for j in range(1, k + 1)]
