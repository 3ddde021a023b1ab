"""Files written atomically are created as an ordinary ``open`` creates them: 0666 less the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import demo, store  # noqa: F401 (fixtures)

from stpp.core.masks import write_mask
from stpp.engine.checkpoint import save_checkpoint
from stpp.store.export import export_project


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints_masks_and_export_zips_honour_the_umask(umask: int, store, demo, tmp_path: Path):  # noqa: F811
    expected = 0o666 & ~umask
    checkpoint = save_checkpoint(tmp_path / "checkpoints" / "teacher_ckpt1.pt", model={"w": torch.zeros(2)})
    mask = tmp_path / "pseudo" / "teacher" / "a.png"
    write_mask(mask, np.zeros((4, 4), dtype=np.uint8), [(0, 0, 0)])
    archive = export_project(store, demo, tmp_path / "export.zip", "voc").path
    assert {p.name: oct(mode(p)) for p in (checkpoint, mask, archive)} == {
        p.name: oct(expected) for p in (checkpoint, mask, archive)}
    assert not list(tmp_path.rglob("*.tmp"))
