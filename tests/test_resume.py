"""Killed and stopped runs finish with ``--resume`` without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_args, run_stpp, start_stpp, stpp_command

from stpp.core.config import LEGACY_VALUES, StppConfig, get_preset
from stpp.core.events import read_events
from stpp.headless import RunError, prepare_run_dir

FAST = ["--set", "optim.student_epochs=2"]


def _start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return start_stpp(*run_args(data, out, "st++", "test", *FAST, *extra))


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended (exit {process.returncode}) before {path} appeared:\n"
                                 f"{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_killed_after_the_teacher_resumes_without_retraining_it(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    process = _start(synthetic_dataset, out)
    _wait_for(out / "checkpoints" / "teacher_ckpt3.pt", process)
    process.kill()
    process.wait()
    teacher_bytes = (out / "checkpoints" / "teacher_ckpt3.pt").read_bytes()

    run_stpp(*run_args(synthetic_dataset, out, "st++", "test", *FAST, "--resume"))
    events = read_events(out / "events.jsonl")
    assert [e["stage"] for e in events if e["kind"] == "stage_start"].count("teacher") == 1
    assert any(e["kind"] == "stage_skipped" and e["stage"] == "teacher" for e in events)
    assert events[-1]["kind"] == "run_end"
    assert (out / "checkpoints" / "teacher_ckpt3.pt").read_bytes() == teacher_bytes
    assert (out / "checkpoints" / "stage2.pt").exists()


def test_killed_mid_stage_resumes_from_last_epoch_and_ends_at_the_planned_step(synthetic_dataset: Path,
                                                                              tmp_path: Path):
    out = tmp_path / "run"
    process = _start(synthetic_dataset, out, "--method", "supervised")
    last = out / "checkpoints" / "last.pt"
    _wait_for(last, process)
    time.sleep(0.5)  # let it get into a later epoch
    process.kill()
    process.wait()
    saved_epoch = torch.load(last, weights_only=True)["epoch"]
    assert saved_epoch >= 1

    run_stpp(*run_args(synthetic_dataset, out, "supervised", "test", *FAST, "--resume"))
    events = read_events(out / "events.jsonl")
    resumed = [e for e in events if e["kind"] == "info" and "resumed_epoch" in e.get("data", {})]
    assert resumed and resumed[-1]["data"]["resumed_epoch"] >= saved_epoch
    after = events[events.index(resumed[-1]):]
    epochs_after = [e["data"]["epoch"] for e in after if e["kind"] == "epoch"]
    assert epochs_after[0] == resumed[-1]["data"]["resumed_epoch"] + 1 and epochs_after[-1] == 12
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total"] == 48  # 12 epochs x 4 steps (8 images doubled, batch 4)
    assert not last.exists()
    assert (out / "checkpoints" / "teacher_ckpt3.pt").exists()


def test_sigterm_to_the_process_group_with_loader_workers_stops_cleanly(synthetic_dataset: Path, tmp_path: Path):
    # torchrun forwards SIGTERM to each rank's whole process group, DataLoader workers included.
    out = tmp_path / "run"
    process = subprocess.Popen(
        stpp_command(*run_args(synthetic_dataset, out, "supervised", "test", "--set", "optim.num_workers=2")),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(out / "checkpoints" / "last.pt", process)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 130, process.stderr.read()[-3000:]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["stage"] == "teacher"


def test_sigterm_stops_cleanly_with_a_resumable_last_checkpoint(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    process = _start(synthetic_dataset, out, "--method", "supervised")
    _wait_for(out / "checkpoints" / "last.pt", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    assert "--resume" in process.stderr.read()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["stage"] == "teacher" and "optimizer" in state and "rng" in state
    run_stpp(*run_args(synthetic_dataset, out, "supervised", "test", *FAST, "--resume"))
    assert read_events(out / "events.jsonl")[-1]["kind"] == "run_end"


def test_a_run_folder_of_an_older_stpp_resumes_with_its_old_behaviour(tmp_path: Path):
    saved = json.loads(get_preset("test").to_json())
    for key in LEGACY_VALUES:
        section, name = key.split(".")
        del saved[section][name]
    out = tmp_path / "old-run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(saved))
    (out / "inputs.json").write_text("{}")
    # What the worker does with the run row: the saved config, read back with the legacy values.
    prepare_run_dir(out, StppConfig.from_dict(saved), {}, resume=True)
    # Today's preset differs from the old folder in exactly the keys it lacks.
    with pytest.raises(RunError, match="optim.teacher_double_below: saved 0, now 200") as refused:
        prepare_run_dir(out, get_preset("test"), {}, resume=True)
    assert "augment.cutout_redraw: saved False, now True" in str(refused.value)
    assert "selftrain.fresh_init: saved False, now True" in str(refused.value)

