"""Small helpers shared by tests that drive the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stpp_command(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "stpp", *map(str, args)]


def run_stpp(*args: str | os.PathLike, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m stpp ARGS`` from the repository root; raise with its output if it fails."""
    result = subprocess.run(stpp_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"stpp {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def start_stpp(*args: str | os.PathLike) -> subprocess.Popen:
    """Start ``python -m stpp ARGS`` from the repository root in the background (stderr piped, as text)."""
    return subprocess.Popen(stpp_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def run_args(data: Path, out: Path, method: str = "st++", preset: str = "test", *extra: str) -> list[str | Path]:
    """``run`` arguments for a folder dataset with labeled/unlabeled/val.txt at its root."""
    return ["run", "--data", data, "--labeled", data / "labeled.txt", "--unlabeled", data / "unlabeled.txt",
            "--val", data / "val.txt", "--method", method, "--preset", preset, "--out", out, *extra]
