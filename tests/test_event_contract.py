"""The contract between the engine's events and the app that reads them, for every switch that changes the passes.

Issue 14: the first ST++ run launched from the browser failed because the teacher's labels came out of the
last stability pass (``stability3+label:teacher``) and the worker's progress mapper could not read that
stage; every worker test had turned TTA off, so none saw it. Here every method runs with TTA on and off,
pixel selection off and on, and (ST++) stage 3 off and on, on the real engine in this process with the
worker's own sinks on a real project store; one more run goes through the job runner and the worker
process with the ``test`` preset's defaults.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from itertools import groupby, product
from pathlib import Path

import pytest
import torch
from test_jobs import RUN_TIMEOUT_S, import_project, log_of

from stpp.core.config import METHODS, StppConfig, get_preset
from stpp.core.events import Activity, Event, ListSink, MultiSink, read_events
from stpp.core.handoff import new_status, write_job, write_status
from stpp.core.layout import RunLayout
from stpp.core.method import num_reliable
from stpp.data.datasets import read_split
from stpp.headless import prepare_run_dir, resolve_config, run_headless
from stpp.jobs import JobRunner
from stpp.services.run_import import import_run_folder
from stpp.services.worker_job import compose_job
from stpp.store import Project, Store, open_store
from stpp.store.runs import claim_queued, create_run, get_run, list_events, update_run
from stpp.worker.main import run_data
from stpp.worker.progress import ProgressTracker, RunProgress

PRESET = get_preset("test")
SHORT = {"optim.epochs": 3, "optim.student_epochs": 1}
"""Epochs cut so each run takes seconds; every other value is the ``test`` preset's."""


@dataclass(frozen=True)
class Switches:
    """The settings that change which passes a run makes (defaults: the ``test`` preset's)."""

    method: str
    tta: bool = PRESET.pseudo.tta
    pixel_threshold: float = PRESET.selftrain.pixel_threshold
    stage3: bool = PRESET.selftrain.stage3

    def overrides(self) -> list[str]:
        values = {**SHORT, "pseudo.tta": self.tta, "selftrain.pixel_threshold": self.pixel_threshold,
                  "selftrain.stage3": self.stage3}
        return [f"{key}={value}" for key, value in values.items()]

    def __str__(self) -> str:
        words = [self.method]
        if self.method != "supervised":
            words += [f"tta_{'on' if self.tta else 'off'}", f"pixel_{self.pixel_threshold}"]
        if self.method == "st++":
            words.append(f"stage3_{'on' if self.stage3 else 'off'}")
        return "-".join(words)


def distinct_runs(method: str, tta: bool, pixel_threshold: float, stage3: bool) -> Switches:
    """The switches as the method sees them: SupOnly ignores all three, ST ignores stage 3."""
    if method == "supervised":
        return Switches(method)
    if method == "st":
        return Switches(method, tta, pixel_threshold)
    return Switches(method, tta, pixel_threshold, stage3)


COMBINATIONS = list(dict.fromkeys(distinct_runs(*values) for values in
                                  product(METHODS, (True, False), (0.0, 0.5), (False, True))))


@dataclass(frozen=True)
class RecordedRun:
    """One project run made in this process, and everything it emitted."""

    cfg: StppConfig
    run_id: int
    layout: RunLayout
    events: list[Event]
    progress: RunProgress


def run_as_the_worker_does(store: Store, project: Project, cfg: StppConfig,
                           teacher_from: RunLayout | None = None) -> RecordedRun:
    """The worker's path without its process: the run's job from the store, its run folder in the workspace,
    the engine (with a list of the events) writing the folder, then the folder imported into the run's row.

    Args:
        teacher_from: a run folder whose teacher checkpoints to start from: the teacher does not depend on
            the switches, and a teacher whose checkpoints are on disk skips its training.
    """
    run = create_run(store, project, cfg)
    assert claim_queued(store, run.id, pid=os.getpid())
    job = compose_job(store, run, attempt=1)
    root = store.path(run.run_dir)
    write_job(root, job)
    update_run(store, run.id, attempt=1)
    data = run_data(job, cfg)
    layout = prepare_run_dir(root, cfg, job.inputs, resume=False)
    if teacher_from is not None:
        shutil.copytree(teacher_from.checkpoints_dir, layout.checkpoints_dir)
    progress = RunProgress(cfg, data, job.pixels_per_image)
    tracker = ProgressTracker(progress)
    captured = ListSink()
    run_headless(cfg, data, layout, torch.device("cpu"), MultiSink([captured, tracker]))
    write_status(root, new_status(job, root, state="done", progress=tracker.progress))
    assert import_run_folder(store, get_run(store, run.id)).status == "done"
    return RecordedRun(cfg, run.id, layout, captured.events, progress)


@pytest.fixture(scope="module")
def contract_store(tmp_path_factory: pytest.TempPathFactory):
    """One store for every combination (each gets its own project, so a failed run blocks no other)."""
    with open_store(tmp_path_factory.mktemp("contract") / "workspace") as opened:
        yield opened


def project_and_config(store: Store, dataset: Path, switches: Switches) -> tuple[Project, StppConfig]:
    """A new project named after the switches, with the dataset imported, and the run's resolved config."""
    project = import_project(store, dataset, str(switches))
    return project, resolve_config("test", switches.method, switches.overrides(), "cpu", project.classes)


@pytest.fixture(scope="module")
def supervised_run(contract_store: Store, synthetic_dataset: Path) -> RecordedRun:
    """The SupOnly combination, trained from scratch: its teacher is every other combination's."""
    project, cfg = project_and_config(contract_store, synthetic_dataset, Switches("supervised"))
    return run_as_the_worker_does(contract_store, project, cfg)


def labelling_passes(events: list[Event]) -> list[tuple[Activity, Event]]:
    """Each labelling pass (consecutive ``labels`` events of one stage text) with its last event, in order."""
    labels = [e for e in events if e.kind == "labels"]
    return [(Activity.parse(stage), list(group)[-1]) for stage, group in groupby(labels, key=lambda e: e.stage)]


def expected_passes(switches: Switches, num_checkpoints: int) -> list[Activity]:
    """The labelling passes the method makes with these switches (the ``test`` preset's TTA scales hold 1.0)."""
    if switches.method == "supervised":
        return []
    if switches.method == "st":
        return [Activity.labelling("teacher")]
    # The teacher's labels differ from its last single-scale masks only with TTA or pixel selection: then the
    # last stability pass writes both; else they are copies of those masks, written without a pass.
    labels_differ = switches.tta or switches.pixel_threshold > 0
    passes = [Activity.stability(j) for j in range(1, num_checkpoints)]
    passes += [Activity.stability(num_checkpoints, labels_too=labels_differ), Activity.labelling("stage1")]
    return passes + ([Activity.labelling("stage2")] if switches.stage3 else [])


def phases_completed_by(activity: Activity, num_checkpoints: int) -> list[str]:
    """The :class:`RunProgress` phases that are done once this labelling pass is."""
    done = ["stability"] if activity.kind == "stability" and activity.checkpoint == num_checkpoints else []
    return done + ([f"label:{activity.labelled_stage}"] if activity.labelled_stage else [])


def expected_pseudo_masks(switches: Switches, unlabelled: int, reliable_ratio: float) -> dict[str, int]:
    """Pseudo masks per labelling stage: the teacher labels the pool, stage 1 its unreliable part, stage 2 all."""
    if switches.method == "supervised":
        return {}
    if switches.method == "st":
        return {"teacher": unlabelled}
    masks = {"teacher": unlabelled, "stage1": unlabelled - num_reliable(unlabelled, reliable_ratio)}
    return masks | ({"stage2": unlabelled} if switches.stage3 else {})


@pytest.mark.parametrize("switches", COMBINATIONS, ids=str)
def test_every_event_is_readable_and_the_progress_and_the_store_follow_it(
        switches: Switches, supervised_run: RecordedRun, contract_store: Store, synthetic_dataset: Path):
    if switches.method == "supervised":
        recorded = supervised_run
    else:
        project, cfg = project_and_config(contract_store, synthetic_dataset, switches)
        recorded = run_as_the_worker_does(contract_store, project, cfg, teacher_from=supervised_run.layout)
    cfg, events, progress = recorded.cfg, recorded.events, recorded.progress
    k = cfg.pseudo.num_checkpoints
    assert (cfg.pseudo.tta, cfg.selftrain.pixel_threshold, cfg.selftrain.stage3) == (
        switches.tta, switches.pixel_threshold, switches.stage3)
    assert events[0].kind == "run_start" and events[-1].kind == "run_end"

    # Every stage text names an activity: in memory, in events.jsonl and in the store's events.
    assert all(e.activity is not None for e in events if e.stage)
    written = read_events(recorded.layout.events_path)
    assert [(e["kind"], e.get("stage", "")) for e in written] == [(e.kind, e.stage) for e in events]
    stored = list_events(contract_store, recorded.run_id)
    assert {e.stage for e in stored if e.stage} == {e.stage for e in events if e.stage}
    for stage in {e.stage for e in stored if e.stage}:
        Activity.parse(stage)
    assert [activity for activity, _ in labelling_passes(events)] == expected_passes(switches, k)

    # The progress over the whole run only rises, and ends at exactly 1.
    values = [(event, value) for event in events if (value := progress(event)) is not None]
    assert [v for _, v in values] == sorted(v for _, v in values), [(e.kind, e.stage, v) for e, v in values]
    assert values[-1][1] == 1.0
    assert get_run(contract_store, recorded.run_id).progress == 1.0

    # Each labelling pass, once done, has completed its phases of the progress bar.
    for activity, last in labelling_passes(events):
        for phase in phases_completed_by(activity, k):
            end = progress.start[phase] + progress.share[phase]
            assert progress(last) >= end - 1e-9, (f"after {activity} the progress is {progress(last):.4f}, "
                                                  f"short of the end of {phase} ({end:.4f})")

    # The store holds the pseudo masks of every stage that labelled, and (ST++) the ranking.
    rows = list(contract_store.db.query("SELECT m.stage, m.path, i.name FROM masks m JOIN images i ON i.id = m.image_id "
                                        "WHERE m.kind = 'pseudo' AND m.run_id = ?", [recorded.run_id]))
    counts = {stage: sum(r["stage"] == stage for r in rows) for stage in {r["stage"] for r in rows}}
    unlabelled = len(read_split(synthetic_dataset / "unlabeled.txt"))
    assert counts == expected_pseudo_masks(switches, unlabelled, cfg.selftrain.reliable_ratio)
    for row in rows:
        assert contract_store.path(row["path"]) == recorded.layout.pseudo_dir(row["stage"]) / f"{row['name']}.png"
    ranks = [r[0] for r in contract_store.db.execute("SELECT rank FROM scores WHERE run_id = ? ORDER BY rank",
                                                     [recorded.run_id])]
    assert ranks == (list(range(1, unlabelled + 1)) if switches.method == "st++" else [])


def test_an_st_pp_run_with_the_test_presets_defaults_finishes_through_the_worker(workspace: Path,
                                                                                 synthetic_dataset: Path):
    """The run that failed in issue 14: ST++ launched as the Train tab launches it, TTA on, no review."""
    with open_store(workspace) as store:
        import_project(store, synthetic_dataset, "synth")
        jobs = JobRunner(store)
        run = jobs.launch("synth", "st++", "test", SHORT, "cpu")
        assert run.config["pseudo"]["tta"] is True and not run.review_plan
        run = jobs.wait(run.id, RUN_TIMEOUT_S)
        assert (run.status, run.progress, run.error) == ("done", 1.0, None), log_of(store, run.id)
        passes = {e.stage for e in list_events(store, run.id, kinds=["labels"])}
        assert str(Activity.stability(PRESET.pseudo.num_checkpoints, labels_too=True)) in passes
