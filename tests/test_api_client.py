"""The app's named API endpoints work from ``gradio_client`` as from the page: a client never sees
the choices a page fills in per session, so every run it names must be taken (and checked)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from test_app import app_with_workers

from stpp.core.layout import RunLayout
from stpp.engine.checkpoint import save_checkpoint
from stpp.headless import resolve_config
from stpp.jobs import JobRunner
from stpp.models import build_model
from stpp.store import get_project, open_store
from stpp.store.demo import DEMO_PROJECT
from stpp.store.runs import create_run, get_run


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    """The real app on the demo workspace, with one cancelled run of the demo project holding a teacher."""
    with app_with_workers(tmp_path_factory.mktemp("api")) as server:
        with open_store(server.workspace) as store:
            classes = get_project(store, DEMO_PROJECT).classes
            cfg = resolve_config("test", "supervised", ["model.pretrained=none"], "cpu", classes)
            run = create_run(store, DEMO_PROJECT, cfg)
            layout = RunLayout(store.path(run.run_dir))
            layout.root.mkdir(parents=True)
            layout.config_path.write_text(cfg.to_json())
            save_checkpoint(layout.teacher_checkpoint(cfg.pseudo.num_checkpoints),
                            model=build_model(cfg.model, cfg.data.num_classes).state_dict(), config=cfg.to_dict(),
                            stage="teacher", epoch=cfg.optim.epochs)
            JobRunner(store).cancel(run.id)
        yield server, run.id


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0].url, verbose=False)


def test_export_model_takes_a_run_the_client_names(app, client):
    _, run_id = app
    message, download = client.predict(run_id, "latest", api_name="/export_model")
    assert message.startswith("Model exported:"), message
    with zipfile.ZipFile(download["value"]) as zf:
        assert {Path(n).name for n in zf.namelist()} >= {"checkpoint.pt", "model.torchscript.pt", "config.json"}
    assert client.predict(999, "latest", api_name="/export_model")[0].startswith("**Not exported:** no run 999")


def test_export_dataset_of_an_unfinished_run_needs_the_choice(app, client):
    _, run_id = app
    args = (DEMO_PROJECT, run_id, "latest", "voc", ["ground truth"], None, False)
    message, _, _ = client.predict(*args, False, api_name="/export_dataset")
    assert message.startswith("**Not exported:**") and "cancelled, not finished" in message
    assert "allow an unfinished run" in message
    message, manifest, download = client.predict(*args, True, api_name="/export_dataset")
    assert "image(s)" in message and Path(download["value"]).is_file(), message


def test_resume_and_cancel_take_a_run_the_client_names(app, client):
    server, run_id = app
    assert client.predict(run_id, api_name="/resume_run").startswith(f"Run {run_id} resumed at ")
    with open_store(server.workspace) as store:
        assert get_run(store, run_id).status in ("queued", "running")
    assert client.predict(run_id, api_name="/cancel_run").startswith(f"Run {run_id} asked to stop at ")
    assert client.predict("nonsense", api_name="/resume_run") == "Choose a run first."
    assert client.predict(999, api_name="/resume_run").startswith("**Could not resume:**")
