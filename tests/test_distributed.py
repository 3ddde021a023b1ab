"""ST++ under ``torchrun --nproc_per_node=2`` (gloo on the CPU): one run folder, disjoint shards, same metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_args

from stpp.core.events import read_events
from stpp.data.datasets import read_split

# Enough teacher steps for a model that predicts more than one class, few enough to stay quick.
FAST = ["--set", "optim.epochs=9", "--set", "optim.student_epochs=1", "--device", "cpu"]


def _torchrun(*args: str | os.PathLike, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "stpp", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}:\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def ddp_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun(*run_args(synthetic_dataset, out, "st++", "test", *FAST))
    return out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _shards(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "debug" / "shards.jsonl").read_text().splitlines()]


def test_completes_st_plus_plus_with_one_copy_of_each_artefact(ddp_run: Path, synthetic_dataset: Path):
    unlabeled = set(read_split(synthetic_dataset / "unlabeled.txt"))
    events = read_events(ddp_run / "events.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("run_start") == kinds.count("run_end") == 1
    starts = [e for e in events if e["kind"] == "stage_start"]
    assert [e["stage"] for e in starts] == ["teacher", "stage1", "stage2"]
    assert all(e["data"]["world_size"] == 2 and e["data"]["batch_per_process"] == 2
               and e["data"]["batch_size"] == 4 for e in starts)
    assert [e["stage"] for e in events if e["kind"] == "eval"] == ["teacher", "stage1", "stage2"]
    # every epoch's event once: 9 teacher epochs, 1 per student
    assert [e["stage"] for e in events if e["kind"] == "epoch"] == ["teacher"] * 9 + ["stage1", "stage2"]

    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == [
        "stage1.pt", "stage2.pt", "teacher_ckpt1.pt", "teacher_ckpt2.pt", "teacher_ckpt3.pt"]
    assert not [p for p in ddp_run.rglob("*") if p.name.endswith(".tmp")]
    for j in (1, 2, 3):
        assert {p.stem for p in (ddp_run / "stability" / f"ckpt{j}").glob("*.png")} == unlabeled
    assert {p.stem for p in (ddp_run / "pseudo" / "teacher").glob("*.png")} == unlabeled
    scores = _csv(ddp_run / "scores.csv")
    assert sorted(r["id"] for r in scores) == sorted(unlabeled)
    assert [int(r["rank"]) for r in scores] == list(range(1, 17))
    for stage in ("teacher", "stage1", "stage2"):
        ids = [r["id"] for r in _csv(ddp_run / "stages" / stage / "train_set.csv")]
        assert len(ids) == len(set(ids))
    unreliable = {r["id"] for r in scores if r["reliable"] == "0"}
    assert {p.stem for p in (ddp_run / "pseudo" / "stage1").glob("*.png")} == unreliable
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"teacher", "stage1", "stage2"}


def test_the_two_ranks_saw_disjoint_shards(ddp_run: Path, synthetic_dataset: Path):
    unlabeled = set(read_split(synthetic_dataset / "unlabeled.txt"))
    val = set(read_split(synthetic_dataset / "val.txt"))
    labeled = set(read_split(synthetic_dataset / "labeled.txt"))
    scores = _csv(ddp_run / "scores.csv")
    unreliable = {r["id"] for r in scores if r["reliable"] == "0"}
    expected = {"stability1": unlabeled, "stability2": unlabeled, "stability3+label:teacher": unlabeled,
                "label:stage1": unreliable, "eval:teacher": val, "eval:stage1": val, "eval:stage2": val}
    records = {r["pass"]: r for r in _shards(ddp_run)}
    assert set(expected) | {"train:teacher:epoch1", "train:stage1:epoch1", "train:stage2:epoch1"} == set(records)
    for name, ids in expected.items():
        first, second = records[name]["ranks"]
        assert first and second, name
        assert not set(first) & set(second), name
        assert sorted(first + second) == sorted(ids), name  # every image once: no padding duplicates
    # The teacher's 8 labelled images are doubled (fewer than optim.teacher_double_below, as the paper's code).
    for stage, size in (("teacher", 16), ("stage1", 16), ("stage2", 32)):
        first, second = records[f"train:{stage}:epoch1"]["ranks"]
        indices = [int(item.split(":")[0]) for item in first + second]
        assert len(first) == len(second) == size // 2
        assert sorted(indices) == list(range(size)), stage
    teacher_items = {item.split(":")[1] for item in sum(records["train:teacher:epoch1"]["ranks"], [])}
    assert teacher_items == labeled
    labels = [e for e in read_events(ddp_run / "events.jsonl")
              if e["kind"] == "labels" and "per_rank" in e.get("data", {})]
    assert [e["data"]["per_rank"] for e in labels if e["stage"] == "stability1"] == [[8, 8]]


@pytest.mark.parametrize("stage", ["teacher", "stage2"])
def test_metrics_equal_a_single_process_evaluation(ddp_run: Path, synthetic_dataset: Path, stage: str):
    metrics = json.loads((ddp_run / "metrics.json").read_text())["stages"][stage]
    # One thread, as each torchrun rank had, so the float sums run in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "stpp", "eval", str(ddp_run), "--data", str(synthetic_dataset),
                             "--split", str(synthetic_dataset / "val.txt"), "--stage", stage, "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads(result.stdout)
    assert single["miou"] == metrics["miou"]
    assert single["per_class"] == metrics["per_class"]
    if stage == "teacher":  # a model that tells classes apart, so equality says something
        assert sum(v is not None and v > 0 for v in single["per_class"].values()) >= 2


def test_resume_under_torchrun_skips_finished_work(ddp_run: Path, synthetic_dataset: Path):
    before = {p: p.stat().st_mtime_ns for p in (ddp_run / "checkpoints").iterdir()}
    lines = len((ddp_run / "events.jsonl").read_text().splitlines())
    _torchrun(*run_args(synthetic_dataset, ddp_run, "st++", "test", *FAST, "--resume"))
    events = read_events(ddp_run / "events.jsonl")[lines:]
    assert [e["kind"] for e in events].count("run_start") == 1 and events[-1]["kind"] == "run_end"
    assert {e["stage"] for e in events if e["kind"] == "stage_skipped"} >= {"teacher", "stage1", "stage2", "ranking"}
    assert not [e for e in events if e["kind"] in ("stage_start", "step")]
    assert {p: p.stat().st_mtime_ns for p in (ddp_run / "checkpoints").iterdir()} == before


def test_sigterm_under_torchrun_leaves_a_clean_last_pt_and_resume_finishes(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = run_args(synthetic_dataset, out, "supervised", "test", "--device", "cpu")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "stpp", *map(str, args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert process.poll() is None, process.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "last.pt did not appear"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    process.wait(timeout=120)
    state = torch.load(last, weights_only=True)
    assert state["stage"] == "teacher" and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    saved_epoch = state["epoch"]
    assert 1 <= saved_epoch < 12

    _torchrun(*args, "--resume")
    events = read_events(out / "events.jsonl")
    resumed = [e for e in events if e["kind"] == "info" and "resumed_epoch" in e.get("data", {})]
    assert resumed and resumed[-1]["data"]["resumed_epoch"] == saved_epoch
    after = events[events.index(resumed[-1]):]
    epochs = [e["data"]["epoch"] for e in after if e["kind"] == "epoch"]
    assert epochs == list(range(saved_epoch + 1, 13))
    steps = [e for e in events if e["kind"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total"] == 48  # 12 epochs x 4 steps (8 images doubled, global batch 4)
    assert not last.exists() and (out / "checkpoints" / "teacher_ckpt3.pt").exists()
