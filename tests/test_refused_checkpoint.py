"""A checkpoint that ``torch.load(weights_only=True)`` refuses ends in one line naming the file and
why, exit 2, for every command that loads one; nothing in it runs and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, stpp_command
from test_jobs import config, import_project
from test_model_export import run_dir  # noqa: F401 (a fixture)

from stpp.core.config import StppConfig
from stpp.core.layout import RunLayout
from stpp.services.outputs import OutputError, predict_images
from stpp.store import open_store
from stpp.store.runs import create_run

REFUSAL = "not a plain tensor checkpoint: refusing to unpickle `posix.system`"


class _Payload:
    """Pickles as a call of ``os.system``: a file appears if anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(layout: RunLayout, marker: Path) -> Path:
    """Replace the run's final teacher checkpoint with one that carries a pickled call."""
    cfg = StppConfig.from_dict(json.loads(layout.config_path.read_text()))
    path = layout.teacher_checkpoint(cfg.pseudo.num_checkpoints)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "config": cfg.to_dict()}, path)
    return path


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def poisoned(run_dir: Path, tmp_path: Path):  # noqa: F811
    marker = tmp_path / "ran"
    path = poison(RunLayout(run_dir), marker)
    yield run_dir, path
    assert not marker.exists(), "the pickled call ran"


def test_eval_predict_and_model_export_refuse_in_one_line(poisoned, synthetic_dataset: Path, tmp_path: Path):
    run, checkpoint = poisoned
    for args in (["eval", run, "--data", synthetic_dataset, "--split", synthetic_dataset / "val.txt"],
                 ["predict", run, "--images", synthetic_dataset / "images", "--out", tmp_path / "masks"]):
        line = one_line(subprocess.run(stpp_command(*args), cwd=REPO, capture_output=True, text=True, timeout=300))
        assert line == f"error: {checkpoint}: {REFUSAL}"
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "stpp.model_export", str(run), "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert one_line(result) == f"error: {checkpoint}: {REFUSAL}"
    assert not out.exists(), sorted(out.rglob("*"))


def test_project_predict_and_the_apps_prediction_give_the_same_line(workspace: Path, synthetic_dataset: Path,
                                                                     tmp_path: Path):
    marker = tmp_path / "ran"
    with open_store(workspace) as store:
        import_project(store, synthetic_dataset, "synth")
        run = create_run(store, "synth", config(store))
        layout = RunLayout(store.path(run.run_dir))
        layout.root.mkdir(parents=True)
        layout.config_path.write_text(run.cfg.to_json())
        checkpoint = poison(layout, marker)
        images = tmp_path / "images"
        shutil.copytree(synthetic_dataset / "images", images)
        result = subprocess.run(stpp_command("project", "predict", "synth", "--images", images, "--out",
                                             tmp_path / "masks", "--run", run.id), cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "STPP_HOME": str(workspace)})
        assert one_line(result) == f"error: {checkpoint}: {REFUSAL}"
        with pytest.raises(OutputError) as refused:
            predict_images(store, run.id, sorted(images.glob("*.png"))[:2])
        assert str(refused.value) == f"{checkpoint}: {REFUSAL}"
    assert not marker.exists(), "the pickled call ran"
