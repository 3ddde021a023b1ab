"""The engine's commands run where only torch and the image libraries are installed.

The lent GPU machines have their own Python with torch but no gradio, sqlite-utils or pycocotools:
``python -m stpp run`` and the benchmarks must not import them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, run_args, stpp_command

APP_ONLY = ("gradio", "sqlite_utils", "pycocotools")

BLOCKER = f'''
import sys

class _AppOnlyModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {APP_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None

sys.meta_path.insert(0, _AppOnlyModules())
'''


def _engine_only_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_blocker_works(tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", "import sqlite_utils"], env=_engine_only_env(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_run_and_bench_without_app_dependencies(synthetic_dataset: Path, tmp_path: Path):
    env = _engine_only_env(tmp_path)
    out = tmp_path / "run"
    command = stpp_command(*run_args(synthetic_dataset, out, "supervised", "test", "--device", "cpu",
                                     "--set", "optim.epochs=3"))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "metrics.json").exists()
    speed = subprocess.run([sys.executable, "-m", "stpp.bench", "speed", "--device", "cpu", "--preset", "test",
                            "--steps", "1", "--warmup", "0", "--rounds", "1", "--images", "2"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert speed.returncode == 0, speed.stderr[-3000:]
    assert "train img/s" in speed.stdout and "label img/s (TTA)" in speed.stdout
    quality = subprocess.run([sys.executable, "-m", "stpp.bench", "quality", "--help"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert quality.returncode == 0, quality.stderr[-3000:]
