"""Copies of served files are bounded: the workspace keeps the newest few export and prediction
folders, and the app has Gradio sweep its own cache of files it served."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import test_app
from test_app import Server
from test_export import demo, store  # noqa: F401 (fixtures)

from stpp.services.outputs import KEEP_SCRATCH, export_dataset, scratch_dir
from stpp.store.demo import DEMO_PROJECT


def test_the_workspace_keeps_the_newest_export_and_prediction_folders(store, demo):  # noqa: F811
    reports = [export_dataset(store, demo.name, "voc") for _ in range(KEEP_SCRATCH + 3)]
    kept = sorted(p.parent for p in store.path("cache/exports").glob("*/*.zip"))
    assert len(kept) == KEEP_SCRATCH and reports[-1].path.is_file()
    assert {r.path.parent for r in reports[-KEEP_SCRATCH:]} == set(kept)
    folders = [scratch_dir(store, "predict") for _ in range(KEEP_SCRATCH + 2)]
    assert sorted(p for p in store.path("cache/predict").iterdir()) == sorted(folders[-KEEP_SCRATCH:])


def test_the_app_sweeps_gradios_copies_of_served_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from gradio_client import Client

    gradio_cache = tmp_path / "gradio"
    monkeypatch.setitem(test_app.ENV, "GRADIO_TEMP_DIR", str(gradio_cache))
    server = Server(tmp_path / "workspace", tmp_path, "--cache-ttl", "4")
    try:
        server.wait_until_up()
        client = Client(server.url, verbose=False, download_files=False)
        message, _, download = client.predict(DEMO_PROJECT, 0, "latest", "voc", ["ground truth"], None, False, False,
                                              api_name="/export_dataset")
        served = [p for p in gradio_cache.rglob("*.zip")]
        assert "image(s)" in message and len(served) == 1, (message, download)
        deadline = time.monotonic() + 60
        while served[0].exists():
            assert time.monotonic() < deadline, "Gradio kept its copy of the export past --cache-ttl"
            time.sleep(0.5)
    finally:
        server.stop()
