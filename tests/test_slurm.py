"""Runs on a real Slurm: a one-node cluster (``munged``, ``slurmctld``, ``slurmd``) started by the session's
fixture, jobs submitted by the app's job runner with ``sbatch``, followed with ``squeue``, cancelled with
``scancel``, requeued with ``scontrol``; the results reach the store only through the run folder.

Skipped with the reason where Slurm is not installed or cannot start; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest
from slurm_cluster import ClusterUnavailable, SlurmCluster, missing_programs
from test_jobs import FAST, RUN_TIMEOUT_S, config, import_project, log_of, store, wait_for  # noqa: F401

from stpp.backends import SlurmBackend
from stpp.core.cluster import SlurmOptions
from stpp.core.events import read_events
from stpp.core.layout import RunLayout
from stpp.jobs import JobRunner
from stpp.store import open_store
from stpp.store.runs import get_run, list_checkpoints, list_events, run_metrics
from ui.services import Services, Settings
from ui.tabs.train import status_markdown

pytestmark = pytest.mark.slurm

IMPORTED_KINDS = ("worker_start", "run_start", "stage_start", "epoch", "checkpoint", "eval", "labels", "ranking",
                  "run_end")
"""Event kinds the worker writes and the store keeps one row for each (step events are thinned)."""
LONG = {"optim.epochs": 12}
"""A teacher long enough to be stopped while it trains."""


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"Slurm must run in CI, but it cannot start: {reason}")
    pytest.skip(f"Slurm cannot start here ({reason}); install slurmctld slurmd slurm-client munge")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running one-node Slurm cluster for the session."""
    missing = missing_programs()
    if missing:
        unavailable(f"not installed: {', '.join(missing)}")
    started = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        started.start()
    except ClusterUnavailable as error:
        unavailable(str(error))
    yield started
    started.stop()


def slurm_runner(store, cluster: SlurmCluster, **options) -> JobRunner:  # noqa: F811
    """The app's job runner with the Slurm backend on the test cluster."""
    return JobRunner(store, backend=SlurmBackend(SlurmOptions(**options), env=cluster.env))


def live_panel(store, runner: JobRunner, run_id: int) -> str:  # noqa: F811
    """The Train tab's status panel of the run, as a page refresh shows it."""
    services = Services(store=store, settings=Settings(workspace=store.workspace), jobs=runner)
    return " ".join(status_markdown(services, get_run(store, run_id)).split())


def ticked_until(runner: JobRunner, run_id: int, condition, what: str, timeout: float = RUN_TIMEOUT_S):
    """Tick the runner (as the app's follower does) until ``condition(run)`` holds; returns the run."""
    def check():
        runner.tick()
        run = get_run(runner.store, run_id)
        return run if condition(run) else None
    return wait_for(check, timeout=timeout, what=what)


def slurm_log(store, run_id: int, cluster: SlurmCluster) -> str:  # noqa: F811
    return f"{log_of(store, run_id)}\n{cluster.logs()}"


def row_summary(store, run_id: int) -> dict:  # noqa: F811
    """What a run left in the store, without what differs between two runs of one config (ids, times, figures)."""
    scores = list(store.db.query("SELECT i.name, s.rank FROM scores s JOIN images i ON i.id = s.image_id "
                                 "WHERE s.run_id = ?", [run_id]))
    return {
        "events": [(e.kind, e.stage) for e in list_events(store, run_id, kinds=IMPORTED_KINDS[1:])],
        "checkpoints": [(c.stage, c.epoch) for c in list_checkpoints(store, run_id)],
        "metrics": list(run_metrics(store, run_id)),
        "scores": sorted(r["name"] for r in scores),
        "ranks": sorted(r["rank"] for r in scores),
        "masks": sorted((r["name"], r["stage"]) for r in store.db.query(
            "SELECT i.name, m.stage FROM masks m JOIN images i ON i.id = m.image_id "
            "WHERE m.run_id = ? AND m.kind = 'pseudo'", [run_id])),
    }


def test_an_st_pp_run_on_slurm_is_queued_then_runs_and_lands_in_the_store_as_a_local_run_does(
        store, cluster: SlurmCluster, workspace: Path, synthetic_dataset: Path):  # noqa: F811
    runner = slurm_runner(store, cluster)
    run = runner.launch("synth", "st++", "test", FAST, "cpu")
    assert (run.status, run.backend) == ("queued", "slurm") and run.job_id.isdigit()
    assert cluster.job_state(run.job_id) in ("PENDING", "CONFIGURING", "RUNNING")
    panel = live_panel(store, runner, run.id)
    assert "status: **queued**" in panel and f"Slurm job `{run.job_id}`, waiting for Slurm to start it" in panel
    layout = RunLayout(store.path(run.run_dir))
    assert layout.root.joinpath("job.json").is_file() and Path(f"{layout.root}.sbatch").is_file()

    run = ticked_until(runner, run.id, lambda r: r.status != "queued", "the job to start")
    assert run.status == "running", slurm_log(store, run.id, cluster)
    assert "status: **running**" in live_panel(store, runner, run.id)
    ticked_until(runner, run.id, lambda r: list_events(store, r.id, kinds=["epoch"]) or r.status != "running",
                 "the teacher's first epoch in the store")

    # The app stops mid-run and starts again: a new store handle and runner carry on from where the import was.
    with open_store(workspace) as reopened:
        restarted = slurm_runner(reopened, cluster)
        assert restarted.recover() == []
        run = restarted.wait(run.id, RUN_TIMEOUT_S)
        assert run.status == "done", slurm_log(reopened, run.id, cluster)
    assert run.progress == 1.0 and run.error is None and not run.resumable
    wait_for(lambda: cluster.job_state(run.job_id) == "COMPLETED", timeout=60, what="the job to end with exit code 0")

    # One store row per event the worker wrote: nothing lost, nothing twice.
    written = Counter(e["kind"] for e in read_events(layout.events_path) if e["kind"] in IMPORTED_KINDS)
    stored = Counter(e.kind for e in list_events(store, run.id, kinds=IMPORTED_KINDS))
    assert stored == written and written["worker_start"] == 1
    slurm_rows = row_summary(store, run.id)
    assert slurm_rows["ranks"] == list(range(1, 17)) and slurm_rows["metrics"] == ["teacher", "stage1", "stage2"]
    assert Counter(stage for _, stage in slurm_rows["masks"]) == {"teacher": 16, "stage1": 8}
    with open(layout.scores_path, newline="") as handle:
        assert sorted(r["id"] for r in csv.DictReader(handle)) == slurm_rows["scores"]

    # The same config on the local backend leaves the same rows.
    import_project(store, synthetic_dataset, "synth-local")
    local = JobRunner(store)
    local_run = local.wait(local.launch("synth-local", "st++", "test", FAST, "cpu").id, RUN_TIMEOUT_S)
    assert local_run.status == "done", log_of(store, local_run.id)
    assert row_summary(store, local_run.id) == slurm_rows


def test_a_pending_slurm_job_is_cancelled_at_once(store, cluster: SlurmCluster):  # noqa: F811
    held = slurm_runner(store, cluster, sbatch_args=("--hold",))  # Slurm keeps a held job pending
    run = held.submit("synth", config(store, "st++"))
    assert run.status == "queued" and cluster.job_state(run.job_id) == "PENDING"
    assert "waiting for Slurm to start it" in live_panel(store, held, run.id)

    cancelled = held.cancel(run.id)
    assert (cancelled.status, cancelled.resumable) == ("cancelled", True)
    wait_for(lambda: cluster.job_state(run.job_id) in (None, "CANCELLED"), timeout=30, what="scancel")
    held.tick()
    assert get_run(store, run.id).status == "cancelled" and not list_events(store, run.id, kinds=["worker_start"])


def test_a_running_slurm_run_stops_on_cancel_and_on_scancel_and_each_resume_continues(
        store, cluster: SlurmCluster):  # noqa: F811
    runner = slurm_runner(store, cluster)
    run = runner.submit("synth", config(store, "st++", **LONG))
    layout = RunLayout(store.path(run.run_dir))
    ticked_until(runner, run.id, lambda r: r.status != "queued" and layout.last_path.exists(),
                 "the teacher's first epoch")

    # Cancel from the app: the worker stops after its step on the stop file and saves last.pt.
    assert runner.cancel(run.id).status == "running"
    run = runner.wait(run.id, 120, statuses=["cancelled", "failed", "done"])
    assert (run.status, run.resumable, run.error) == ("cancelled", True, None), slurm_log(store, run.id, cluster)
    first_job = run.job_id

    # Resume submits a new job, which continues from last.pt; scancel from outside the app stops it.
    run = runner.resume(run.id)
    assert run.status == "queued" and run.job_id not in (None, first_job)
    epochs_before = len(list_events(store, run.id, kinds=["epoch"]))
    run = ticked_until(runner, run.id, lambda r: len(list_events(store, r.id, kinds=["epoch"])) > epochs_before
                       or r.status not in ("queued", "running"), "an epoch of the resumed worker")
    assert run.status == "running", slurm_log(store, run.id, cluster)
    cluster.client(["scancel", run.job_id])
    run = runner.wait(run.id, 120, statuses=["cancelled", "failed", "done"])
    assert run.status in ("cancelled", "failed") and run.resumable, slurm_log(store, run.id, cluster)

    run = runner.resume(run.id)
    run = runner.wait(run.id, RUN_TIMEOUT_S)
    assert run.status == "done", slurm_log(store, run.id, cluster)
    resumed = [e for e in list_events(store, run.id, kinds=["info"]) if e.message.startswith("resumed teacher")]
    assert len(resumed) == 2 and len(list_events(store, run.id, kinds=["worker_start"])) == 3
    assert [c.stage for c in list_checkpoints(store, run.id)][-2:] == ["stage1", "stage2"]


def test_a_job_slurm_requeues_keeps_its_run_running_and_continues_from_last_pt(
        store, cluster: SlurmCluster):  # noqa: F811
    runner = slurm_runner(store, cluster)
    run = runner.submit("synth", config(store, "st++", **LONG))
    layout = RunLayout(store.path(run.run_dir))
    run = ticked_until(runner, run.id, lambda r: r.status != "queued" and layout.last_path.exists(),
                       "the teacher's first epoch")
    job_id = run.job_id

    # As a preemption or a node failure does: Slurm stops the job and queues it again under its id.
    cluster.client(["scontrol", "requeue", job_id])
    run = ticked_until(runner, run.id, lambda r: list_events(store, r.id, kinds=["requeued"])
                       or r.status != "running", "the requeue to be noticed", timeout=120)
    assert run.status == "running" and not run.error, slurm_log(store, run.id, cluster)
    assert "Slurm queued job" in list_events(store, run.id, kinds=["requeued"])[-1].message
    cluster.client(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])  # Slurm holds a requeued job 2 min

    run = runner.wait(run.id, RUN_TIMEOUT_S)
    assert run.status == "done" and run.job_id == job_id, slurm_log(store, run.id, cluster)
    assert len(list_events(store, run.id, kinds=["worker_start"])) == 2
    assert any(e.message.startswith("resumed teacher") for e in list_events(store, run.id, kinds=["info"]))
