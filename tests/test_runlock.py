"""One writer per run folder: a second process on a held folder is refused with the holder's PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, run_args, start_stpp, stpp_command
from test_jobs import config, import_project

from stpp.core.events import read_events
from stpp.core.handoff import read_status
from stpp.core.runlock import LOCK_NAME, RunFolderBusy, RunFolderLock
from stpp.jobs import JobRunner
from stpp.store import open_store
from stpp.store.runs import create_run

LONG = ["--set", "optim.epochs=60"]


def _start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return start_stpp(*run_args(data, out, "supervised", "test", *LONG, *extra))


def _wait_for_steps(out: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until the run has trained a step (so it holds the folder and is mid-stage)."""
    deadline = time.monotonic() + timeout
    events = out / "events.jsonl"
    while not (events.exists() and any(e["kind"] == "step" for e in read_events(events))):
        assert process.poll() is None, f"run ended (exit {process.returncode}):\n{process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.1)


def test_a_second_run_on_a_held_folder_is_refused_and_the_first_finishes(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    first = _start(synthetic_dataset, out)
    _wait_for_steps(out, first)
    second = subprocess.run(stpp_command(*run_args(synthetic_dataset, out, "supervised", "test", *LONG, "--resume")),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.poll() is None, "the first run ended before the second was refused: make it longer"
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert f"in use by process {first.pid}" in line and str(out) in line
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    events = read_events(out / "events.jsonl")
    assert [e["kind"] for e in events].count("run_start") == 1 and events[-1]["kind"] == "run_end"
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps == sorted(steps)


def test_a_killed_holder_leaves_no_lock_behind(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    holder = _start(synthetic_dataset, out)
    _wait_for_steps(out, holder)
    try:
        RunFolderLock(out).acquire()
        raise AssertionError("the folder was not held while its run trained")
    except RunFolderBusy as error:
        assert f"process {holder.pid}" in str(error)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()  # the file stays; the kernel dropped the lock with the process
    with RunFolderLock(out):
        pass


def test_the_worker_refuses_a_run_whose_folder_is_held(workspace: Path, synthetic_dataset: Path):
    with open_store(workspace) as store:
        import_project(store, synthetic_dataset, "synth")
        run = create_run(store, "synth", config(store))
        root = store.path(run.run_dir)
        JobRunner(store)._order(run)  # the job.json a start writes first
        with RunFolderLock(root):
            result = subprocess.run([sys.executable, "-m", "stpp", "worker", str(root)],
                                    cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert f"in use by process {os.getpid()}" in line
        assert read_status(root) is None  # refused before it reported anything


def test_a_lock_taken_then_entered_is_held_once_and_then_free(tmp_path: Path):
    lock = RunFolderLock(tmp_path / "run").acquire()
    with lock:
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    with RunFolderLock(tmp_path / "run"):
        pass
