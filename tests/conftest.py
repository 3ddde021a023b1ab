"""Shared fixtures: a temporary workspace, a generated dataset a model can learn, the demo data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from synthetic import write_dataset

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "data" / "demo"
CAMVID_DIR = (REPO.parent / "shared" / "data" / "camvid").resolve()

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace folder, also exported as STPP_HOME."""
    path = tmp_path / "workspace"
    path.mkdir()
    monkeypatch.setenv("STPP_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated folder dataset (8 labelled, 16 unlabelled, 8 validation 64x64 images, 4 classes).

    Session-scoped and read-only by convention: tests that modify data copy it first.
    """
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The demo project shipped in data/demo (real CamVid images)."""
    assert DEMO_DIR.is_dir(), "data/demo is missing"
    return DEMO_DIR
