"""Bad input to ``python -m stpp run``: one clear error naming the file or key, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stpp.cli.main import main


@pytest.fixture
def data(synthetic_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_dataset, root)
    return root


def _run(data: Path, out: Path, *extra: str, labeled: str = "labeled.txt", unlabeled: str = "unlabeled.txt") -> list[str]:
    return ["run", "--data", str(data), "--labeled", str(data / labeled), "--unlabeled", str(data / unlabeled),
            "--val", str(data / "val.txt"), "--preset", "test", "--out", str(out), *extra]


def _fails(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert len(err.strip().splitlines()) >= 1
    return err


def test_missing_image(data, tmp_path, capsys):
    (data / "images" / "labeled_003.png").unlink()
    _fails(capsys, _run(data, tmp_path / "out"), "labeled_003", "labeled.txt")
    assert not (tmp_path / "out").exists()


def test_unreadable_image(data, tmp_path, capsys):
    (data / "images" / "unlabeled_002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _fails(capsys, _run(data, tmp_path / "out"), "unlabeled_002")
    assert not (tmp_path / "out").exists()


def test_mask_of_a_different_size(data, tmp_path, capsys):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(data / "masks" / "labeled_001.png")
    _fails(capsys, _run(data, tmp_path / "out"), "labeled_001", "size")
    assert not (tmp_path / "out").exists()


def test_mask_values_beyond_the_classes(data, tmp_path, capsys):
    mask = np.zeros((64, 64), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(data / "masks" / "val_000.png")
    _fails(capsys, _run(data, tmp_path / "out"), "val_000", "7")
    assert not (tmp_path / "out").exists()


def test_id_in_both_labeled_and_unlabeled(data, tmp_path, capsys):
    (data / "unlabeled.txt").write_text((data / "unlabeled.txt").read_text() + "labeled_000\n")
    _fails(capsys, _run(data, tmp_path / "out"), "labeled_000", "both")
    assert not (tmp_path / "out").exists()


def test_empty_labeled_list(data, tmp_path, capsys):
    (data / "empty.txt").write_text("\n")
    _fails(capsys, _run(data, tmp_path / "out", labeled="empty.txt"), "empty.txt", "empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--preset", "nope"], ["nope", "pascal"]),
    (["--set", "model.backbone=resnet9000"], ["resnet9000", "mobilenet_v2"]),
    (["--set", "optim.nonsense=1"], ["optim.nonsense", "optim.epochs"]),
    (["--set", "optim.epochs=many"], ["optim.epochs", "many"]),
    (["--set", "model.pretrained=/no/such/weights.pth"], ["/no/such/weights.pth"]),
    (["--set", "optim.epochs=2"], ["num_checkpoints=3", "optim.epochs"]),
])
def test_bad_preset_model_or_override(data, tmp_path, capsys, extra, expected):
    _fails(capsys, _run(data, tmp_path / "out", *extra), *expected)
    assert not (tmp_path / "out").exists()


def test_out_holding_another_run_needs_resume(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = {"preset": "pascal", "method": "st"}
    (out / "config.json").write_text(json.dumps(other))
    _fails(capsys, _run(data, out), "already holds a run", "--resume")
    assert json.loads((out / "config.json").read_text()) == other
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    _fails(capsys, _run(data, out, "--resume"), "config differs")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
