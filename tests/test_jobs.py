"""Project runs through the job runner and the real worker subprocess, on a real store.

The generated dataset is imported as a project; runs use the ``test`` preset cut down with
overrides, so each worker trains for seconds on the CPU.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stpp.backends.local import LocalBackend, worker_alive
from stpp.cli.main import main as project_main
from stpp.core.config import StppConfig
from stpp.core.events import Event, read_events
from stpp.core.handoff import PROGRESS_SCALE, new_status, read_job, write_job, write_status
from stpp.core.layout import RunLayout
from stpp.headless import resolve_config
from stpp.jobs import JobRunner, worker_log_path
from stpp.selftrain.pipeline import RunData
from stpp.services.gallery import GalleryQuery, gallery_page, review_cache
from stpp.services.run_import import EventRecorder, import_run_folder
from stpp.services.worker_job import compose_job
from stpp.store import create_project, get_project, import_folder_dataset, open_store
from stpp.store.housekeeping import delete_run, prune_run_checkpoints
from stpp.store.runs import (
    RunConflict,
    RunStateError,
    claim_queued,
    count_rows,
    create_run,
    estimate_eta,
    get_run,
    list_checkpoints,
    list_events,
    loss_points,
    record_event,
    run_metrics,
    transition,
    update_run,
)
from stpp.worker.main import run_data, worker_main
from stpp.worker.progress import RunProgress

FAST = {"optim.epochs": 3, "optim.student_epochs": 1, "pseudo.tta": False}
RUN_TIMEOUT_S = 420


def import_project(store, dataset: Path, name: str):
    project = create_project(store, name, dataset / "classes.json")
    report = import_folder_dataset(store, project, dataset)
    assert not report.failed, report.failed
    return project


@pytest.fixture
def store(workspace: Path, synthetic_dataset: Path):
    """A store with the generated dataset imported as project ``synth``."""
    with open_store(workspace) as opened:
        import_project(opened, synthetic_dataset, "synth")
        yield opened


def config(store, method: str = "supervised", project: str = "synth", **overrides) -> StppConfig:
    """A resolved project-run config (resolved in this process: tests may load torch)."""
    classes = get_project(store, project).classes
    values = {**FAST, **overrides}
    return resolve_config("test", method, [f"{k}={v}" for k, v in values.items()], "cpu", classes)


def wait_for(condition, timeout: float = RUN_TIMEOUT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # poll interval, not a fixed wait
    raise AssertionError(f"timed out waiting for {what}")


def imported_events(jobs: JobRunner, run_id: int, kinds: list[str]) -> list:
    """The run's events of ``kinds`` once what its worker wrote so far is imported (as the app's ticks do)."""
    jobs.import_results()
    return list_events(jobs.store, run_id, kinds=kinds)


def log_of(store, run_id: int) -> str:
    path = worker_log_path(store, run_id)
    return path.read_text()[-4000:] if path.exists() else "(no worker log)"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_an_st_pp_run_through_the_worker_records_everything_in_the_store(store, workspace: Path):
    references = [store.path(row["path"]) for row in store.db.query("SELECT path FROM masks WHERE kind = 'reference'")]
    assert len(references) == 16
    for path in references:
        # Training must never read these: a read would fail the run.
        path.write_bytes(b"not a png: reference masks are for measuring only")

    jobs = JobRunner(store)
    run = jobs.launch("synth", "st++", "test", FAST, "cpu")
    assert run.status == "running" and run.pid
    assert run.config["optim"]["epochs"] == 3 and run.config["data"]["num_classes"] == 4
    run = jobs.wait(run.id, RUN_TIMEOUT_S)
    assert run.status == "done", log_of(store, run.id)
    assert run.progress == 1.0 and run.error is None and run.finished and not run.resumable

    layout = RunLayout(store.path(run.run_dir))
    assert run.run_dir == f"runs/{run.id}"
    assert json.loads(layout.config_path.read_text())["method"] == "st++"

    metrics = run_metrics(store, run.id)
    assert list(metrics) == ["teacher", "stage1", "stage2"]
    assert all(isinstance(m, float) and 0 <= m <= 100 for m in metrics.values())
    kinds = {e.kind for e in list_events(store, run.id)}
    assert {"worker_start", "run_start", "stage_start", "epoch", "checkpoint", "eval", "labels", "ranking",
            "run_end"} <= kinds
    assert loss_points(store, run.id)

    checkpoints = list_checkpoints(store, run.id)
    assert [(c.stage, c.epoch) for c in checkpoints] == [("teacher", 1), ("teacher", 2), ("teacher", 3),
                                                         ("stage1", 1), ("stage2", 1)]
    assert all(store.path(c.path).is_file() for c in checkpoints)
    assert checkpoints[-1].metrics["miou"] == metrics["stage2"] and "per_class" in checkpoints[-1].metrics

    scores = list(store.db.query("SELECT s.*, i.name, i.role FROM scores s JOIN images i ON i.id = s.image_id "
                                 "WHERE run_id = ? ORDER BY rank", [run.id]))
    assert [s["rank"] for s in scores] == list(range(1, 17))
    assert {s["role"] for s in scores} == {"unlabelled"} and sum(s["reliable"] for s in scores) == 8
    with open(layout.scores_path, newline="") as handle:
        assert [r["id"] for r in csv.DictReader(handle)] == [s["name"] for s in scores]

    pseudo = list(store.db.query("SELECT * FROM masks WHERE kind = 'pseudo' AND run_id = ?", [run.id]))
    by_stage = {stage: sum(m["stage"] == stage for m in pseudo) for stage in {m["stage"] for m in pseudo}}
    assert by_stage == {"teacher": 16, "stage1": 8}
    assert all(store.path(m["path"]).is_file() and m["path"].startswith(f"runs/{run.id}/pseudo/") for m in pseudo)

    # What each stage trained on: ground truth and pseudo masks only, never a reference mask.
    inputs = json.loads(layout.inputs_path.read_text())
    assert (len(inputs["labeled"]), len(inputs["unlabeled"]), len(inputs["val"])) == (8, 16, 8)
    for stage in ("teacher", "stage1", "stage2"):
        with open(layout.train_set_path(stage), newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and not any("reference" in r["mask"] for r in rows)
        assert all(r["source"] == "ground_truth" for r in rows if r["id"] in inputs["labeled"])
        assert all(r["source"].startswith("pseudo:") for r in rows if r["id"] in inputs["unlabeled"])

    # The progress the store showed only ever went up, and the events file is the same run's.
    cfg = StppConfig.from_dict(run.config)
    progress = RunProgress(cfg, run_data(read_job(layout.root), cfg), 64 * 64)
    values = [v for v in (progress(Event(**{k: e[k] for k in e if k in Event.__dataclass_fields__}))
                          for e in read_events(layout.events_path)) if v is not None]
    assert values == sorted(values) and values[-1] == 1.0

    # The project CLI predicts with the project's latest finished run, like `stpp predict` on its folder.
    images = workspace.parent / "predict-in"
    images.mkdir()
    for name in inputs["val"][:2]:
        (images / f"{name}.png").write_bytes(store.path(store.db.execute(
            "SELECT path FROM images WHERE name = ?", [name]).fetchone()[0]).read_bytes())
    assert project_main(["project", "predict", "synth", "--images", str(images), "--out",
                         str(workspace.parent / "predict-out"), "--workspace", str(workspace)]) == 0
    assert sorted(p.name for p in (workspace.parent / "predict-out").iterdir()) == sorted(
        [f"{n}.png" for n in inputs["val"][:2]] + ["manifest.json"])

    # Housekeeping on the finished run: prune keeps each stage's final model, delete removes it all.
    freed = prune_run_checkpoints(store, run.id)
    assert freed > 0
    assert [(c.stage, c.epoch) for c in list_checkpoints(store, run.id)] == [("teacher", 3), ("stage1", 1),
                                                                           ("stage2", 1)]
    assert sorted(p.name for p in layout.checkpoints_dir.iterdir()) == ["stage1.pt", "stage2.pt", "teacher_ckpt3.pt"]
    assert layout.stability_dir(1).is_dir()
    thumbnails = review_cache(store, run.id)
    page = gallery_page(store, GalleryQuery(run.id))
    assert page.items and all(Path(item.thumbnail).is_relative_to(thumbnails) for item in page.items)
    delete_run(store, run.id)
    assert not layout.root.exists() and not thumbnails.exists()
    for table in ("runs", "events", "checkpoints", "scores"):
        column = "id" if table == "runs" else "run_id"
        assert store.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", [run.id]).fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM masks WHERE run_id = ?", [run.id]).fetchone()[0] == 0


def test_a_second_unfinished_run_on_a_project_is_refused(store):
    jobs = JobRunner(store)
    first = create_run(store, "synth", config(store))
    with pytest.raises(RunConflict, match=rf"already has an unfinished run: run {first.id} is queued"):
        create_run(store, "synth", config(store))
    with pytest.raises(RunConflict, match="cancel it"):
        jobs.launch("synth", "st++", "test", FAST)
    cancelled = jobs.cancel(first.id)
    assert (cancelled.status, cancelled.resumable) == ("cancelled", True)
    second = create_run(store, "synth", config(store))
    with pytest.raises(RunConflict):
        jobs.resume(first.id)
    with pytest.raises(RunStateError, match="cannot be resumed|not failed or cancelled|is queued"):
        jobs.resume(second.id)
    assert [r.status for r in map(lambda r: get_run(store, r.id), (first, second))] == ["cancelled", "queued"]


def test_a_killed_worker_is_marked_failed_by_recover_and_resume_completes(store, workspace: Path):
    jobs = JobRunner(store)
    run = jobs.submit("synth", config(store, **{"optim.epochs": 12}))
    layout = RunLayout(store.path(run.run_dir))
    wait_for(lambda: layout.last_path.exists(), what="the teacher's first epoch")
    kill_group(get_run(store, run.id).pid)
    wait_for(lambda: not worker_alive(run.pid, run.id), timeout=30, what="the worker to die")

    recovered = JobRunner(store).recover()  # as a freshly started app does
    assert [r.id for r in recovered] == [run.id]
    run = get_run(store, run.id)
    assert (run.status, run.resumable) == ("failed", True)
    assert "ended without reporting" in run.error

    # Resumed by a process that exits at once, as an app that is stopped right after: the worker,
    # in its own session, carries on, and a runner that did not spawn it sees it through.
    code = ("import sys; from stpp.jobs import JobRunner; from stpp.store import open_store; "
            "JobRunner(open_store(sys.argv[1])).resume(int(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(workspace), str(run.id)], check=True, timeout=120)
    run = JobRunner(store).wait(run.id, RUN_TIMEOUT_S)
    assert run.status == "done", log_of(store, run.id)
    assert run.error is None and "teacher" in run_metrics(store, run.id)
    resumed = [e for e in list_events(store, run.id, kinds=["info"]) if e.message.startswith("resumed teacher")]
    assert resumed, "the second worker did not continue from last.pt"
    assert len(list_events(store, run.id, kinds=["worker_start"])) == 2


def test_cancel_stops_cleanly_and_the_queue_moves_on(store, synthetic_dataset: Path):
    import_project(store, synthetic_dataset, "synth2")
    jobs = JobRunner(store)
    long = jobs.submit("synth", config(store, **{"optim.epochs": 500}))
    waiting = jobs.submit("synth2", config(store, project="synth2"))
    try:
        assert get_run(store, long.id).status == "running"
        assert jobs.tick() == [] and get_run(store, waiting.id).status == "queued"  # one training on the CPU
        wait_for(lambda: jobs.tick() is not None and count_rows(store, "events", long.id) >= 4
                 and list_events(store, long.id, kinds=["epoch"]), what="the long run to train")
        assert jobs.cancel(long.id).status == "running"  # asked to stop; it stops after its step
        long = jobs.wait(long.id, 60, statuses=["cancelled", "failed", "done"])
        assert (long.status, long.resumable, long.error) == ("cancelled", True, None), log_of(store, long.id)
        assert RunLayout(store.path(long.run_dir)).last_path.exists()
        wait_for(lambda: not worker_alive(long.pid, long.id), timeout=30, what="the cancelled worker to exit")
        with pytest.raises(RunStateError, match="nothing to cancel"):
            jobs.cancel(long.id)

        waiting = jobs.wait(waiting.id, RUN_TIMEOUT_S)
        assert waiting.status == "done", log_of(store, waiting.id)
    finally:
        for run_id in (long.id, waiting.id):
            pid = get_run(store, run_id).pid
            if pid and worker_alive(pid, run_id):
                kill_group(pid)


def test_tick_from_several_processes_starts_one_run_per_slot(store, workspace: Path, synthetic_dataset: Path):
    import_project(store, synthetic_dataset, "synth2")
    first = create_run(store, "synth", config(store))
    second = create_run(store, "synth2", config(store, project="synth2"))

    class SleepingBackend(LocalBackend):
        def command(self, run_dir: Path, spec) -> list[str]:
            # Looks like a worker of the run to worker_alive, but only sleeps: longer than the ticks can
            # take on a loaded machine (the finally clause kills it).
            return [sys.executable, "-c", "import time; time.sleep(600)", "worker", str(run_dir)]

    barrier = threading.Barrier(4)
    started: list[int] = []

    def tick() -> None:
        with open_store(workspace) as own:  # its own connections, as another process would have
            barrier.wait()
            started.extend(JobRunner(own, backend=SleepingBackend()).tick())

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert started == [first.id]
        assert [get_run(store, r.id).status for r in (first, second)] == ["running", "queued"]
        assert worker_alive(get_run(store, first.id).pid, first.id)
    finally:
        pid = get_run(store, first.id).pid
        if pid:
            kill_group(pid)


def test_a_claimed_run_whose_worker_never_started_fails_after_the_grace(store):
    run = create_run(store, "synth", config(store))
    assert claim_queued(store, run.id, pid=None)
    assert JobRunner(store, start_grace_s=60).reap() == []
    [failed] = JobRunner(store, start_grace_s=0).reap()
    assert (failed.status, failed.resumable) == ("failed", True)
    assert failed.error == "the worker did not start; resume to try again"


def test_a_new_start_is_not_ended_by_the_status_its_earlier_start_left(store):
    run = create_run(store, "synth", config(store))
    assert claim_queued(store, run.id, pid=None) and get_run(store, run.id).attempt == 1
    root = store.path(run.run_dir)
    job = compose_job(store, get_run(store, run.id), 1)
    write_job(root, job)
    write_status(root, new_status(job, root, state="cancelled"))
    assert import_run_folder(store, get_run(store, run.id)).status == "cancelled"
    transition(store, run.id, "queued", expect=["cancelled"], pid=None, resumable=False)

    # Claimed again by one process; another imports the folder before the new job.json is written.
    assert claim_queued(store, run.id, pid=None)
    again = import_run_folder(store, get_run(store, run.id))
    assert (again.status, again.attempt) == ("running", 2)


def test_the_worker_refuses_a_folder_without_a_job(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert worker_main(tmp_path / "new") == 2
    assert "job.json is missing" in capsys.readouterr().err


def test_imported_step_events_are_thinned_by_their_own_time(store, tmp_path: Path):
    run = create_run(store, "synth", config(store))
    recorder = EventRecorder(store, run.id, RunLayout(tmp_path / "run"), {})
    for t, step in ((0.0, 10), (0.3, 20), (0.6, 30), (1.2, 40), (1.3, 50), (1.4, 60)):
        recorder.emit(Event("step", "teacher", step=step, total=60, loss=1.0, time=1000 + t))
        recorder.emit(Event("labels", "stability1", step=step, total=60, time=1000 + t))
    steps = [e.step for e in list_events(store, run.id, kinds=["step"])]
    assert steps == [10, 40, 60]  # every ~1 s, and the stage's last step
    assert len(list_events(store, run.id, kinds=["labels"])) == 6


def test_reference_masks_never_reach_the_run_data(store):
    job = compose_job(store, create_run(store, "synth", config(store)), attempt=1)
    data = run_data(job, StppConfig.from_dict(job.config))
    assert isinstance(data, RunData)
    assert (len(data.labeled), len(data.unlabeled), len(data.val)) == (8, 16, 8)
    assert all(s.mask_path is None for s in data.unlabeled)
    assert all("ground_truth" in str(s.mask_path) for s in data.labeled + data.val)


def test_eta_comes_from_the_progress_made_since_the_worker_started(store):
    run = create_run(store, "synth", config(store))
    assert claim_queued(store, run.id, pid=None)
    now = time.time()
    record_event(store, run.id, Event("worker_start", step=2000, total=PROGRESS_SCALE, time=now - 30))
    update_run(store, run.id, progress=0.5)
    assert estimate_eta(store, get_run(store, run.id), now=now) == pytest.approx(50, rel=0.01)
    # The 10 s the worker took to start (imports, model) are not the run's pace.
    record_event(store, run.id, Event("step", "teacher", step=1, total=40, time=now - 20))
    assert estimate_eta(store, get_run(store, run.id), now=now) == pytest.approx(20 * 0.5 / 0.3, rel=0.01)
    update_run(store, run.id, progress=0.2)
    assert estimate_eta(store, get_run(store, run.id), now=now) is None  # nothing gained yet
