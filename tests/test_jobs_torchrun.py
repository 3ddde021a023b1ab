"""Project runs over several processes: device choices, queue slots, and real torchrun workers.

The runs train the ``test`` preset in two CPU processes (``cpu*2``, gloo) through the job runner,
the same path a run over several GPUs takes; the GPU forms are checked by their parsing, their
queue slots and the environment their torchrun gets.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_jobs import FAST, RUN_TIMEOUT_S, config, imported_events, log_of, store, wait_for  # noqa: F401 - store is a fixture

from stpp.backends.local import ranks as _ranks
from stpp.backends.local import signal_group as _signal_group
from stpp.backends.local import torchrun_env as _torchrun_env
from stpp.backends.local import worker_alive
from stpp.core.config import ConfigError
from stpp.core.devices import Device, DeviceSpec, parse_device_spec
from stpp.core.layout import RunLayout
from stpp.jobs import JobRunner, detect_devices
from stpp.store import create_project
from stpp.store.runs import (
    cancel_requested_at,
    claim_queued,
    create_run,
    end_running,
    get_run,
    list_checkpoints,
    list_events,
    request_cancel,
    run_metrics,
    transition,
)

TWO_CPU_PROCESSES = "cpu*2"


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def stop_everything(store, run_id: int) -> None:
    """Kill a test's torchrun worker and its ranks, whatever state the test left them in."""
    pid = get_run(store, run_id).pid
    if pid and worker_alive(pid, run_id):
        _signal_group(pid, signal.SIGKILL, run_id)


def gone(pids: list[int], run_id: int) -> bool:
    return not any(worker_alive(pid, run_id) for pid in pids)


def both_ranks(run) -> list[int]:
    """The pids of a run's two torchrun ranks once both have started, else an empty list."""
    ranks = _ranks(run.pid, run.id)
    return ranks if len(ranks) == 2 else []


# Device settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, gpus, processes, canonical", [
    ("auto", "auto", (), 1, "auto"),
    ("cpu", "cpu", (), 1, "cpu"),
    ("cuda", "cuda", (), 1, "cuda"),
    ("cuda:3", "cuda", (3,), 1, "cuda:3"),
    ("cuda:0,1", "cuda", (0, 1), 2, "cuda:0,1"),
    (" cuda:2, 0 ,5 ", "cuda", (2, 0, 5), 3, "cuda:2,0,5"),
    ("cpu*2", "cpu", (), 2, "cpu*2"),
    ("cpu*1", "cpu", (), 1, "cpu"),
])
def test_device_settings_parse_to_a_kind_gpus_and_a_process_count(text, kind, gpus, processes, canonical):
    spec = parse_device_spec(text)
    assert (spec.kind, spec.gpus, spec.processes, str(spec)) == (kind, gpus, processes, canonical)
    assert spec.distributed == (processes > 1)
    assert parse_device_spec(str(spec)) == spec


@pytest.mark.parametrize("text, message", [
    ("cuda:0,0", "lists GPU 0 more than once"),
    ("cuda:1,0,1", "lists GPU 1 more than once"),
    ("cuda:", "GPUs are listed by index"),
    ("cuda:0,", "GPUs are listed by index"),
    ("cuda:-1", "GPUs are listed by index"),
    ("cuda:all", "GPUs are listed by index"),
    ("cpu*0", "at least 1"),
    ("cpu*two", "at least 1"),
    ("cpu:2", "unknown device 'cpu:2'; use auto, cpu, cpu\\*N"),
    ("gpu", "unknown device 'gpu'"),
    ("mps", "unknown device"),
])
def test_malformed_device_settings_are_refused_with_the_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_device_spec(text)


def test_each_process_resolves_its_own_device_and_a_run_holds_every_gpu_it_uses():
    assert parse_device_spec("cuda:0,1").process_device == "cuda"  # torchrun gives each rank cuda:LOCAL_RANK
    assert parse_device_spec("cuda:2").process_device == "cuda:2"
    assert parse_device_spec("cpu*4").process_device == "cpu"
    assert parse_device_spec("cuda:0,2").slots == ("cuda:0", "cuda:2")
    assert parse_device_spec("cuda").slots == ("cuda:0",)
    assert parse_device_spec("cpu*2").slots == parse_device_spec("cpu").slots == ("cpu",)


def test_several_gpus_add_one_choice_for_a_run_over_all_of_them(monkeypatch: pytest.MonkeyPatch):
    gpus = [{"index": i, "name": "NVIDIA H100", "memory_bytes": 80 * 2**30} for i in range(4)]
    listing = subprocess.CompletedProcess([], 0, stdout=json.dumps(gpus) + "\n", stderr="")
    monkeypatch.setattr("stpp.jobs._run_worker_module", lambda *args, **kwargs: listing)
    devices = detect_devices.__wrapped__()
    assert [d.id for d in devices] == ["cpu", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0,1,2,3"]
    assert devices[-1].label == "all 4 GPUs (torchrun)"

    listing = subprocess.CompletedProcess([], 0, stdout=json.dumps(gpus[:1]) + "\n", stderr="")
    monkeypatch.setattr("stpp.jobs._run_worker_module", lambda *args, **kwargs: listing)
    assert [d.id for d in detect_devices.__wrapped__()] == ["cpu", "cuda:0"]


def test_a_launch_pins_and_checks_the_device_against_this_machines_gpus(store, monkeypatch: pytest.MonkeyPatch):
    jobs = JobRunner(store)
    two_gpus = (Device("cpu", "CPU"), Device("cuda:0", "GPU 0"), Device("cuda:1", "GPU 1"),
                Device("cuda:0,1", "all 2 GPUs (torchrun)"))
    monkeypatch.setattr("stpp.jobs.detect_devices", lambda: two_gpus)
    assert [jobs._pin_device(d) for d in ("auto", "cuda", "cuda:1", "cuda:1,0", "cpu*2", "cpu*1")] == [
        "cuda:0", "cuda:0", "cuda:1", "cuda:1,0", "cpu*2", "cpu"]
    with pytest.raises(ConfigError, match=r"device cuda:0,2: GPU 2 is not here \(this machine shows GPU 0, 1\)"):
        jobs._pin_device("cuda:0,2")
    with pytest.raises(ConfigError, match="lists GPU 1 more than once"):
        jobs.launch("synth", "st++", "test", FAST, "cuda:1,1")

    monkeypatch.setattr("stpp.jobs.detect_devices", lambda: (Device("cpu", "CPU"),))
    assert jobs._pin_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="GPU 0, 1 is not here .this machine shows no CUDA GPU"):
        jobs._pin_device("cuda:0,1")


def test_a_run_over_several_gpus_holds_all_of_them_in_the_queue(store, synthetic_dataset: Path):
    runs = {}
    for name, device in (("a", "cuda:0"), ("b", "cuda:0,1"), ("c", "cuda:1"), ("d", TWO_CPU_PROCESSES),
                         ("e", "cpu")):
        create_project(store, name, synthetic_dataset / "classes.json")
        runs[name] = create_run(store, name, replace(config(store), device=device)).id
    jobs = JobRunner(store)

    def status() -> dict[str, str]:
        return {name: get_run(store, run_id).status for name, run_id in runs.items()}

    # GPU 0 goes to a; b waits for it and keeps GPU 1 free for itself rather than for c, which came
    # later; two CPU processes hold the one CPU slot like one.
    assert jobs._claim() == [runs["a"], runs["d"]]
    assert status() == {"a": "running", "b": "queued", "c": "queued", "d": "running", "e": "queued"}
    assert jobs._claim() == []

    assert end_running(store, runs["a"], "done", None)
    assert jobs._claim() == [runs["b"]]
    assert jobs._claim() == []  # b holds GPU 1 as well: c waits
    assert end_running(store, runs["b"], "done", None)
    assert end_running(store, runs["d"], "done", None)
    assert jobs._claim() == [runs["c"], runs["e"]]


def test_the_worker_command_is_torchrun_for_several_processes_only(store, workspace: Path, synthetic_dataset: Path):
    create_project(store, "gpus", synthetic_dataset / "classes.json")
    jobs = JobRunner(store)
    single = create_run(store, "synth", config(store))
    several = create_run(store, "gpus", replace(config(store), device="cuda:0,1"))
    assert jobs.worker_command(single.id) == [sys.executable, "-m", "stpp", "worker",
                                              str((workspace / "runs" / str(single.id)).absolute())]
    assert jobs.worker_command(several.id) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "stpp.worker", str((workspace / "runs" / str(several.id)).absolute())]


def test_torchrun_gets_the_chosen_gpus_and_threads(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = _torchrun_env(parse_device_spec("cuda:1,3"))
    assert (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) == ("1,3", "3")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the app's own GPUs: indices count within them
    monkeypatch.delenv("OMP_NUM_THREADS")
    env = _torchrun_env(parse_device_spec("cuda:1,3"))
    assert env["CUDA_VISIBLE_DEVICES"] == "5,7" and int(env["OMP_NUM_THREADS"]) >= 1
    assert _torchrun_env(DeviceSpec("cpu", processes=2))["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"


def test_a_run_queued_again_does_not_inherit_the_cancel_that_stopped_it(store):
    run = create_run(store, "synth", config(store))
    assert claim_queued(store, run.id, pid=None)
    request_cancel(store, run.id)
    assert cancel_requested_at(store, run.id) is not None
    assert end_running(store, run.id, "cancelled", None, resumable=True)
    transition(store, run.id, "queued", expect=["cancelled"], pid=None, resumable=False)
    # Else the next worker would stop at its start, or the reaper kill it for an overdue cancel.
    assert cancel_requested_at(store, run.id) is None


# Real torchrun workers ----------------------------------------------------------------------------


def test_an_st_pp_run_in_two_processes_records_everything_once(store, workspace: Path):
    jobs = JobRunner(store)
    run = jobs.launch("synth", "st++", "test", FAST, TWO_CPU_PROCESSES)
    try:
        assert run.status == "running" and run.pid and run.device == TWO_CPU_PROCESSES
        # Popen may return while the child is still inside execve (vfork), its command line empty.
        launcher = wait_for(lambda: command_line(run.pid), timeout=30, what="torchrun's command line")
        assert launcher[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                "-m", "stpp.worker"] and Path(launcher[7]).name == str(run.id)
        assert worker_alive(run.pid, run.id)  # torchrun stands for the worker
        ranks = wait_for(lambda: both_ranks(run), timeout=120, what="torchrun's two ranks")
        assert all(command_line(pid)[-2:] == ["stpp.worker", launcher[7]] for pid in ranks)

        run = jobs.wait(run.id, RUN_TIMEOUT_S)
        assert run.status == "done", log_of(store, run.id)
    finally:
        stop_everything(store, run.id)
    assert run.progress == 1.0 and run.error is None and not run.resumable

    metrics = run_metrics(store, run.id)
    assert list(metrics) == ["teacher", "stage1", "stage2"]
    assert all(isinstance(m, float) and 0 <= m <= 100 for m in metrics.values())

    events = list_events(store, run.id)
    kinds = [e.kind for e in events]
    assert kinds.count("worker_start") == kinds.count("run_start") == kinds.count("run_end") == 1
    assert f"(pid {run.pid} on " in next(e.message for e in events if e.kind == "worker_start")
    assert [e.stage for e in events if e.kind == "stage_end"] == ["teacher", "stage1", "stage2"]
    assert [e.stage for e in events if e.kind == "eval"] == ["teacher", "stage1", "stage2"]
    assert [e.stage for e in events if e.kind == "epoch"] == ["teacher"] * 3 + ["stage1", "stage2"]
    layout = RunLayout(store.path(run.run_dir))
    file_events = [json.loads(line) for line in layout.events_path.read_text().splitlines()]
    assert [e["kind"] for e in file_events].count("run_start") == 1
    file_starts = [e for e in file_events if e["kind"] == "stage_start"]
    assert [e["stage"] for e in file_starts] == ["teacher", "stage1", "stage2"]
    assert all(e["data"]["world_size"] == 2 for e in file_starts)

    checkpoints = list_checkpoints(store, run.id)
    assert [(c.stage, c.epoch) for c in checkpoints] == [("teacher", 1), ("teacher", 2), ("teacher", 3),
                                                         ("stage1", 1), ("stage2", 1)]
    assert sorted(p.name for p in layout.checkpoints_dir.iterdir()) == [
        "stage1.pt", "stage2.pt", "teacher_ckpt1.pt", "teacher_ckpt2.pt", "teacher_ckpt3.pt"]
    assert not [p for p in layout.root.rglob("*") if p.name.endswith(".tmp")]
    scores = list(store.db.query("SELECT image_id, rank FROM scores WHERE run_id = ? ORDER BY rank", [run.id]))
    assert [s["rank"] for s in scores] == list(range(1, 17))
    assert len({s["image_id"] for s in scores}) == 16
    pseudo = list(store.db.query("SELECT image_id, stage FROM masks WHERE kind = 'pseudo' AND run_id = ?", [run.id]))
    assert len(pseudo) == len({(m["image_id"], m["stage"]) for m in pseudo})
    assert {stage: sum(m["stage"] == stage for m in pseudo) for stage in ("teacher", "stage1")} == {
        "teacher": 16, "stage1": 8}
    shards = [json.loads(line) for line in (layout.root / "debug" / "shards.jsonl").read_text().splitlines()]
    assert shards and all(len(record["ranks"]) == 2 for record in shards)


def test_cancel_stops_every_rank_cleanly_and_resume_finishes(store):
    jobs = JobRunner(store)
    run = jobs.submit("synth", replace(config(store, **{"optim.epochs": 40}), device=TWO_CPU_PROCESSES))
    try:
        wait_for(lambda: imported_events(jobs, run.id, ["epoch"]), what="the first epoch")
        ranks = both_ranks(run)
        assert ranks
        assert jobs.cancel(run.id).status == "running"  # asked to stop; the ranks stop after their step
        cancelled = jobs.wait(run.id, 90, statuses=["cancelled", "failed", "done"])
        assert (cancelled.status, cancelled.resumable, cancelled.error) == ("cancelled", True, None), \
            log_of(store, run.id)
        assert RunLayout(store.path(run.run_dir)).last_path.exists()
        wait_for(lambda: gone([run.pid, *ranks], run.id), timeout=60, what="torchrun and its ranks to exit")

        run = jobs.resume(run.id)
        run = jobs.wait(run.id, RUN_TIMEOUT_S)
        assert run.status == "done", log_of(store, run.id)
    finally:
        stop_everything(store, run.id)
    resumed = [e for e in list_events(store, run.id, kinds=["info"]) if e.message.startswith("resumed teacher")]
    assert resumed, "the ranks did not continue from last.pt"
    assert len(list_events(store, run.id, kinds=["worker_start"])) == 2
    assert [e.stage for e in list_events(store, run.id, kinds=["stage_end"])] == ["teacher"]


def test_a_killed_torchrun_worker_takes_its_ranks_along_and_recover_marks_it(store):
    jobs = JobRunner(store)
    run = jobs.submit("synth", replace(config(store, **{"optim.epochs": 40}), device=TWO_CPU_PROCESSES))
    try:
        ranks = wait_for(lambda: both_ranks(run), timeout=120, what="torchrun's two ranks")
        _signal_group(run.pid, signal.SIGKILL, run.id)  # what reap does to a worker that ignored a cancel
        wait_for(lambda: gone([run.pid, *ranks], run.id), timeout=30, what="torchrun and both ranks to die")
        [recovered] = JobRunner(store).recover()
    finally:
        stop_everything(store, run.id)
    assert recovered.id == run.id and (recovered.status, recovered.resumable) == ("failed", True)
    assert "ended without reporting" in recovered.error
