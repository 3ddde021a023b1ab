"""The Train form takes weights files only from the workspace's ``weights/`` folder; any other value
gets one message, whether the path is elsewhere, missing or not a file. The headless CLI keeps
``--set model.pretrained=PATH`` for the operator's own files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_app import app_with_workers

from stpp.headless import resolve_config
from stpp.jobs import WEIGHTS_DIR, form_overrides
from stpp.models.weights import imagenet_weights_file
from stpp.store import open_store
from stpp.store.demo import DEMO_PROJECT
from stpp.store.runs import list_runs

FORM = dict(backbone="mobilenet_v2", epochs=3, student_epochs=1, batch_size=2, crop_size=32, reliable_ratio=0.5,
            tta=False, amp="off", stage3=False)


def launch_args(weights: str) -> tuple:
    """``/launch_run`` inputs: project, method, preset, device, review, then the form (FORM_FIELDS order)."""
    f = FORM
    return (DEMO_PROJECT, "supervised", "test", "cpu", False, f["backbone"], weights, f["epochs"], f["student_epochs"],
            f["batch_size"], f["crop_size"], f["reliable_ratio"], f["tta"], f["amp"], f["stage3"])


@pytest.fixture(scope="module")
def mobilenet() -> Path:
    path = imagenet_weights_file("mobilenet_v2")
    if path is None:
        pytest.skip("the offline MobileNetV2 weights package is not installed")
    return Path(path)


def test_the_form_refuses_every_path_outside_weights_with_one_message(tmp_path: Path, mobilenet: Path):
    from gradio_client import Client, handle_file

    with app_with_workers(tmp_path) as server:
        weights = server.workspace / WEIGHTS_DIR
        (weights / "folder.pth").mkdir(parents=True)
        outside = tmp_path / "elsewhere.pth"
        shutil.copyfile(mobilenet, outside)
        client = Client(server.url, verbose=False)
        refused = {}
        for value in ("/etc/shadow", "/etc/passwd", str(outside), "missing.pth", str(weights / "missing.pth"),
                      "../stpp.db", "folder.pth", f"{WEIGHTS_DIR}/../stpp.db"):
            message, _ = client.predict(*launch_args(value), api_name="/launch_run")
            refused[value] = message.replace(repr(value), "VALUE")
        assert len(set(refused.values())) == 1, refused
        assert next(iter(refused.values())).startswith("**Not launched:** weights must be imagenet, none, or the name")
        with open_store(server.workspace) as store:
            assert list_runs(store) == []

        upload = tmp_path / "mnv2.pth"
        shutil.copyfile(mobilenet, upload)
        name, message = client.predict(handle_file(str(upload)), api_name="/upload_weights")
        assert (name, message) == ("mnv2.pth", "")
        assert (weights / "mnv2.pth").read_bytes() == mobilenet.read_bytes()
        other = tmp_path / "other" / "mnv2.pth"
        other.parent.mkdir()
        other.write_bytes(b"not the same file")
        _, message = client.predict(handle_file(str(other)), api_name="/upload_weights")
        assert "already holds another file" in message
        assert (weights / "mnv2.pth").read_bytes() == mobilenet.read_bytes()


def test_a_file_in_weights_is_taken_and_the_cli_keeps_local_paths(tmp_path: Path, mobilenet: Path):
    weights = tmp_path / WEIGHTS_DIR
    weights.mkdir()
    shutil.copyfile(mobilenet, weights / "mnv2.pth")
    for typed in ("mnv2.pth", str(weights / "mnv2.pth")):
        overrides = form_overrides(**{**FORM, "pretrained": typed}, weights_dir=weights)
        assert overrides["model.pretrained"] == str(weights / "mnv2.pth")
    cfg = resolve_config("test", "supervised", [f"{k}={v}" for k, v in overrides.items()])
    assert cfg.model.pretrained == str(weights / "mnv2.pth")
    # Headless, the operator's own path anywhere still loads.
    assert resolve_config("test", "supervised", [f"model.pretrained={mobilenet}"]).model.pretrained == str(mobilenet)
