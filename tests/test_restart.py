"""Runs outlive the app: a run keeps training while the app restarts and the new app shows it finish;
a worker killed with SIGKILL shows as failed and resumable, and Resume on the page completes it.

One app process per phase, a real ``python app.py`` on a temporary workspace with the generated
dataset as project ``synth``; runs are short SupOnly runs of the ``test`` preset.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app import REPO, Server, kill_running_workers
from test_data_tab import Page, driver  # noqa: F401 (a fixture)

from stpp.backends.local import worker_alive
from stpp.core.layout import RunLayout
from stpp.store import create_project, import_folder_dataset, open_store
from stpp.store.runs import get_run, list_events

PROJECT = "synth"
RUN_TIMEOUT_S = 420
# Started by a process that exits at once, as from an app stopped right after: the worker must
# not depend on whoever started it.
LAUNCH = ("import json, sys; from stpp.jobs import JobRunner; from stpp.store import open_store; "
          "run = JobRunner(open_store(sys.argv[1])).launch(sys.argv[2], 'supervised', 'test', "
          "json.loads(sys.argv[3]), 'cpu'); print(run.id)")


class App:
    """The app under test; :meth:`restart` stops it and starts another on the same workspace."""

    def __init__(self, root: Path):
        self.root = root
        self.workspace = root / "workspace"
        self.server = self._start()

    def _start(self) -> Server:
        server = Server(self.workspace, self.root, "--no-demo")
        server.wait_until_up()
        return server

    def restart(self) -> None:
        self.server.stop()
        self.server = self._start()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path):
    root = tmp_path_factory.mktemp("restart")
    with open_store(root / "workspace") as store:
        project = create_project(store, PROJECT, synthetic_dataset / "classes.json")
        assert not import_folder_dataset(store, project, synthetic_dataset).failed
    running = App(root)
    try:
        yield running
    finally:
        running.server.stop()
        # Workers outlive the app by design; a failed test must not leave one training.
        kill_running_workers(running.workspace)


def launch(workspace: Path, epochs: int) -> int:
    overrides = json.dumps({"optim.epochs": epochs, "pseudo.tta": False})
    result = subprocess.run([sys.executable, "-c", LAUNCH, str(workspace), PROJECT, overrides], cwd=REPO,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)  # poll interval, not a fixed wait
    raise AssertionError(f"timed out waiting for {what}")


def open_train_tab(driver, url: str) -> Page:
    page = Page(driver)
    driver.get(url)
    page.tab("Train")
    page.until(lambda: page.find("#train-project input").get_attribute("value") == PROJECT)
    return page


def progress_bar(page: Page) -> tuple[str, float]:
    bar = page.find("#train-progress .stpp-progress")
    return bar.get_attribute("data-status"), float(bar.get_attribute("data-progress"))


def log_of(workspace: Path, run_id: int) -> str:
    path = workspace / "runs" / f"{run_id}.log"
    return path.read_text()[-3000:] if path.exists() else "(no worker log)"


@pytest.mark.browser
def test_a_run_keeps_going_across_an_app_restart_and_the_new_app_shows_it_finish(app: App, driver):  # noqa: F811
    with open_store(app.workspace) as store:
        run_id = launch(app.workspace, epochs=10)
        wait_for(lambda: get_run(store, run_id).progress > 0, 180, "the first epoch")
        app.restart()
        run = get_run(store, run_id)
        assert run.status == "running" and worker_alive(run.pid, run_id), f"the worker did not survive: {run}"

    page = open_train_tab(driver, app.server.url)
    status, progress = page.until(lambda: progress_bar(page)[1] > 0 and progress_bar(page))
    assert status in ("running", "done") and progress > 0
    page.until(lambda: page.find("#train-run input").get_attribute("value").startswith(f"#{run_id} SupOnly (test)"))
    statuses = []
    page.until(lambda: statuses.append(progress_bar(page)) or statuses[-1][0] == "done",
               lambda: log_of(app.workspace, run_id), timeout=RUN_TIMEOUT_S)
    assert not {s for s, _ in statuses} & {"failed", "cancelled"}
    page.until(lambda: "status: done" in page.text("train-status"))
    with open_store(app.workspace) as store:
        run = get_run(store, run_id)
        assert (run.status, run.progress, run.error) == ("done", 1.0, None)
        assert len(list_events(store, run_id, kinds=["worker_start"])) == 1


@pytest.mark.browser
def test_a_killed_worker_shows_failed_resumable_and_resume_on_the_page_completes(app: App, driver):  # noqa: F811
    with open_store(app.workspace) as store:
        run_id = launch(app.workspace, epochs=4)
        layout = RunLayout(store.path(get_run(store, run_id).run_dir))
        wait_for(layout.last_path.exists, 180, "the teacher's first checkpoint")
        pid = get_run(store, run_id).pid
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not worker_alive(pid, run_id), 30, "the worker to die")

    page = open_train_tab(driver, app.server.url)  # the newest run is shown
    page.until(lambda: progress_bar(page)[0] == "failed", "the app did not notice the dead worker")
    assert "(resumable)" in page.text("train-status") and "ended without reporting" in page.text("train-status")
    page.until(lambda: page.find("#train-resume").is_enabled())
    page.find("#train-resume").click()
    page.until(lambda: progress_bar(page)[0] == "done", lambda: log_of(app.workspace, run_id), timeout=RUN_TIMEOUT_S)
    with open_store(app.workspace) as store:
        run = get_run(store, run_id)
        assert (run.status, run.error, run.resumable) == ("done", None, False)
        assert len(list_events(store, run_id, kinds=["worker_start"])) == 2
        assert any(e.message.startswith("resumed teacher") for e in list_events(store, run_id, kinds=["info"]))
