"""Model export: the checkpoint with its config, and a TorchScript file that runs without stpp."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stpp.core.config import DataConfig, StppConfig, get_preset
from stpp.core.layout import RunLayout
from stpp.data.transforms import normalize
from stpp.engine.checkpoint import load_model, save_checkpoint
from stpp.headless import RunError
from stpp.model_export import export_model, main, zip_export
from stpp.models import build_model


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder holding a (randomly initialised) teacher, as a finished SupOnly run would."""
    cfg = replace(get_preset("test"), method="supervised",
                  model=replace(get_preset("test").model, pretrained="none"),
                  data=DataConfig(num_classes=4, class_names=("bg", "red", "green", "blue"),
                                  palette=((0, 0, 0), (220, 30, 30), (30, 200, 30), (40, 60, 230))))
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.config_path.write_text(cfg.to_json())
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).eval()
    save_checkpoint(layout.teacher_checkpoint(cfg.pseudo.num_checkpoints), model=model.state_dict(),
                    config=cfg.to_dict(), stage="teacher", epoch=cfg.optim.epochs)
    return layout.root


def test_torchscript_runs_without_stpp_and_matches(run_dir: Path, tmp_path: Path):
    files = export_model(run_dir, tmp_path / "export")
    assert files.stage == "teacher"
    info = json.loads(files.info.read_text())
    assert info["classes"] == ["bg", "red", "green", "blue"] and info["num_classes"] == 4
    assert StppConfig.from_dict(json.loads(files.config.read_text())).method == "supervised"
    assert torch.load(files.checkpoint, weights_only=True)["config"]["method"] == "supervised"

    torch.manual_seed(1)
    images = torch.rand(2, 3, 70, 90)
    torch.save(images, tmp_path / "input.pt")
    with torch.inference_mode():
        expected = load_model(run_dir / "checkpoints" / "teacher_ckpt3.pt")(normalize(images))["out"]

    # -I: isolated mode, so neither the repository, the working folder nor PYTHONPATH is on sys.path.
    script = ("import sys, torch\n"
              "try:\n    import stpp\n    sys.exit('stpp is importable')\nexcept ImportError:\n    pass\n"
              f"model = torch.jit.load({str(files.torchscript)!r}).eval()\n"
              f"with torch.inference_mode():\n    out = model(torch.load({str(tmp_path / 'input.pt')!r}))\n"
              f"torch.save(out, {str(tmp_path / 'output.pt')!r})\n")
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    output = torch.load(tmp_path / "output.pt")
    assert output.shape == (2, 4, 70, 90)
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(output.argmax(1), expected.argmax(1))

    archive = zip_export(files, tmp_path / "model.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["model-teacher/checkpoint.pt", "model-teacher/config.json",
                                         "model-teacher/model.json", "model-teacher/model.torchscript.pt"]


def test_unknown_stage_is_refused(run_dir: Path, tmp_path: Path, capsys):
    with pytest.raises(RunError, match="unknown stage"):
        export_model(run_dir, tmp_path / "x", "stage9")
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 2
    assert "not an stpp run folder" in capsys.readouterr().err
