"""What a review is worth to the model: ST++ students trained after a simulated review.

For each variant (``automatic``: no review; or an order of :mod:`stpp.bench.review` at a budget with
M corrections) the run paused after its ranking is forked: its folder (teacher checkpoints, stability
masks, scores, teacher labels) is copied to ``<workspace>/students/run<ID>-<variant>``, the simulated
reviewer decides inside a rolled-back store transaction, and the worker's own composition of the run's
inputs (:func:`stpp.services.worker_job.compose_job`, which reads the latest review decisions as it
does when a person presses *Continue* on the Review tab) becomes the fork's data. The fork then trains
the students headless, so what is measured is what the app's continued run would train on: accepted
and corrected images join the labelled set, rejected ones leave every later stage.

A fork is reused and resumed: the decisions are made again (they are deterministic) and must match
the ones saved in its ``review.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from stpp.bench.review import AUTOMATIC, Rule, check_ranked, review_order, simulate_review
from stpp.core.config import StppConfig
from stpp.core.events import EventSink
from stpp.core.handoff import JOB_NAME, STATUS_NAME, STOP_NAME, JobImage
from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save
from stpp.core.runlock import LOCK_NAME, RunFolderLock
from stpp.engine.device import resolve_device
from stpp.headless import read_run_config, run_headless
from stpp.selftrain.pipeline import RunData
from stpp.services.worker_job import compose_job
from stpp.store.db import Store, StoreError
from stpp.store.runs import get_run, run_layout
from stpp.store.trial import rolled_back
from stpp.worker.main import run_data

REVIEW_FILE = "review.json"
REVIEWED_DIR = "reviewed"


@dataclass(frozen=True)
class StudentVariant:
    """One trained variant: no review (``order`` None), or an order with a budget and M corrections."""

    order: str | None = None
    budget: int = 0
    corrections: int = 0

    @property
    def name(self) -> str:
        """``automatic`` or ``<order>-<budget>-m<corrections>``."""
        return AUTOMATIC if self.order is None else f"{self.order}-{self.budget}-m{self.corrections}"


def student_variants(orders: Sequence[str], budget: int, corrections: int) -> list[StudentVariant]:
    """The automatic run, then one variant per order at ``budget`` with ``corrections``."""
    return [StudentVariant()] + [StudentVariant(order, budget, corrections) for order in orders]


def fork_folder(store: Store, run_id: int, variant: StudentVariant) -> Path:
    """Where the variant's students train: ``<workspace>/students/run<ID>-<variant>``."""
    return store.path("students") / f"run{run_id}-{variant.name}"


def fork_run(source: RunLayout, target: Path) -> RunLayout:
    """Copy a ranked run's folder to ``target`` (kept when it exists: the fork is resumed)."""
    if target.exists():
        return RunLayout(target)
    copying = target.with_name(f".{target.name}.copying")
    shutil.rmtree(copying, ignore_errors=True)
    handoff = shutil.ignore_patterns(LOCK_NAME, STOP_NAME, JOB_NAME, STATUS_NAME, "*.tmp")
    shutil.copytree(source.root, copying, ignore=handoff)
    os.replace(copying, target)
    return RunLayout(target)


def reviewed_data(store: Store, run_id: int, variant: StudentVariant, threshold: float, seed: int,
                  fork: RunLayout, cfg: StppConfig) -> tuple[RunData, dict[str, str]]:
    """The fork's data after the variant's review, and the decisions by image name.

    The decisions are recorded with the Review tab's function and rolled back once the worker's
    inputs are composed; the reviewed masks they wrote are copied into the fork's ``reviewed/``
    (the workspace's copies are unreferenced once rolled back, and housekeeping may remove them).

    Raises:
        StoreError: the fork's saved decisions differ from these.
    """
    run = get_run(store, run_id)
    with rolled_back(store):
        decisions = {}
        if variant.order is not None:
            names = review_order(store, run.id, variant.order, seed)[:variant.budget]
            decisions = {d.image: d.decision
                         for d in simulate_review(store, run.id, names, Rule(threshold, variant.corrections))}
        job = compose_job(store, run, attempt=1)
    saved = fork.root / REVIEW_FILE
    if saved.exists() and json.loads(saved.read_text())["decisions"] != decisions:
        raise StoreError(f"{fork.root} was trained after other decisions than these; remove it to train again")
    reviewed_dir = fork.root / REVIEWED_DIR
    reviewed_dir.mkdir(exist_ok=True)
    kept = []
    for image in job.reviewed:
        mask = reviewed_dir / f"{image.name}.png"
        if not mask.exists():
            atomic_save(mask, lambda tmp, src=image.mask: shutil.copyfile(src, tmp))
        kept.append(JobImage(image.name, image.image, str(mask)))
    if not saved.exists():
        record = {"variant": variant.name, "threshold": threshold, "seed": seed, "decisions": decisions}
        atomic_save(saved, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    return run_data(replace(job, reviewed=tuple(kept)), cfg), decisions


def train_students(store: Store, run_id: int, variants: Sequence[StudentVariant], threshold: float = 0.6,
                   seed: int = 0, until: str | None = None, device: str = "cpu",
                   sink: EventSink | None = None) -> list[dict]:
    """Fork the ranked run once per variant, review, and train its students (to ``until``, else the end).

    Raises:
        StoreError: the run is not paused after its ranking (:func:`~stpp.bench.review.check_ranked`).
        RunFolderBusy: another process trains in a fork.

    Returns:
        One row per variant: its name, order, budget, M, decision counts, val mIoU per stage
        trained so far, the last trained stage and its mIoU, and the fork's folder (relative to the
        working directory).
    """
    check_ranked(store, run_id)
    source = run_layout(store, get_run(store, run_id))
    rows = []
    for variant in variants:
        fork = fork_run(source, fork_folder(store, run_id, variant))
        cfg = read_run_config(fork)
        with RunFolderLock(fork.root):
            data, decisions = reviewed_data(store, run_id, variant, threshold, seed, fork, cfg)
            run_headless(cfg, data, fork, resolve_device(device), sink=sink, pause_after=until)
        stages = {stage: (m or {}).get("miou")
                  for stage, m in json.loads(fork.metrics_path.read_text())["stages"].items()}
        counts = {kind: sum(d == kind for d in decisions.values()) for kind in ("accepted", "rejected", "corrected")}
        trained = [stage for stage, miou in stages.items() if miou is not None]
        rows.append({"variant": variant.name, "order": variant.order, "budget": variant.budget,
                     "corrections": variant.corrections, **counts, "stages": stages,
                     "last_stage": trained[-1] if trained else None,
                     "miou": stages[trained[-1]] if trained else None,
                     "folder": os.path.relpath(fork.root)})
    return rows
