"""Where things live: the workspace, and the run folder with every path a run writes."""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_VARIABLE = "STPP_HOME"
"""The environment variable that names the workspace."""
PREDICTION_MANIFEST = "manifest.json"
"""What ``python -m stpp predict`` writes beside its masks: the run, stage, model and TTA that made
them, and each mask's image."""


def default_workspace() -> Path:
    """The workspace when none is given: ``$STPP_HOME``, else ``./workspace``."""
    return Path(os.environ.get(WORKSPACE_VARIABLE) or "workspace")


class RunLayout:
    """Paths inside ``RUN_DIR`` (see README, "Headless run")."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def inputs_path(self) -> Path:
        return self.root / "inputs.json"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def scores_path(self) -> Path:
        return self.root / "scores.csv"

    @property
    def teacher_signals_path(self) -> Path:
        """The final teacher's per-image probability signals (see :mod:`stpp.core.teacher_signals`)."""
        return self.root / "teacher_signals.csv"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def shards_path(self) -> Path:
        """Under ``torchrun``: which IDs each rank trained on, labelled and evaluated, per pass (JSON lines)."""
        return self.root / "debug" / "shards.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_path(self) -> Path:
        return self.checkpoints_dir / "last.pt"

    def teacher_checkpoint(self, index: int) -> Path:
        """The teacher's checkpoint ``index`` (1-based, K = final teacher)."""
        return self.checkpoints_dir / f"teacher_ckpt{index}.pt"

    def model_path(self, stage: str, num_checkpoints: int) -> Path:
        """The final model of a stage (the teacher's is its K-th checkpoint)."""
        if stage == "teacher":
            return self.teacher_checkpoint(num_checkpoints)
        return self.checkpoints_dir / f"{stage}.pt"

    def stability_dir(self, index: int) -> Path:
        return self.root / "stability" / f"ckpt{index}"

    def pseudo_dir(self, stage: str) -> Path:
        """Masks labelled by the model of ``stage``."""
        return self.root / "pseudo" / stage

    def train_set_path(self, stage: str) -> Path:
        return self.root / "stages" / stage / "train_set.csv"
