"""``python app.py`` as a real subprocess: it serves the demo project, and refuses bad workspaces."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from browser import headless_chrome

from stpp.backends.local import worker_alive
from stpp.store import open_store
from stpp.store.runs import list_runs

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
START_TIMEOUT_S = 120
ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("STPP_HOME", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_app(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def http_get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, str]:
    with (opener or urllib.request.build_opener()).open(url, timeout=10) as response:
        return response.status, response.read().decode("utf-8", "replace")


class Server:
    """A running ``python app.py``; output goes to files so a full pipe never blocks it.

    Args:
        workspace: the app's workspace.
        logs: where its stdout and stderr go (appended, so a restarted app keeps the earlier lines).
        args: more command-line arguments.
        port: the port (a free one by default); requests always go to 127.0.0.1.
    """

    def __init__(self, workspace: Path, logs: Path, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.workspace = workspace
        self.stdout_path, self.stderr_path = logs / "stdout.txt", logs / "stderr.txt"
        with open(self.stdout_path, "a") as out, open(self.stderr_path, "a") as err:
            self.process = subprocess.Popen(
                [sys.executable, "app.py", "--port", str(self.port), "--workspace", str(workspace), *args],
                cwd=REPO, env=ENV, stdout=out, stderr=err)

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def wait_until_up(self, opener: urllib.request.OpenerDirector | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"app.py exited with {self.process.returncode}:\n{self.output()}")
            try:
                if http_get(self.url, opener)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)  # poll interval, not a fixed wait
        pytest.fail(f"app.py did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


@contextlib.contextmanager
def app_with_workers(tmp_path: Path) -> Iterator[Server]:
    """A running app on a fresh workspace; on exit, the app stops and any worker still training is killed.

    Workers outlive the app by design; a failed test must not leave one training.
    """
    srv = Server(tmp_path / "workspace", tmp_path)
    try:
        srv.wait_until_up()
        yield srv
    finally:
        srv.stop()
        kill_running_workers(srv.workspace)


def kill_running_workers(workspace: Path) -> None:
    """SIGKILL the worker (process group) of every run still running in ``workspace``."""
    with open_store(workspace) as store:
        for run in list_runs(store, statuses=["running"]):
            if worker_alive(run.pid, run.id):
                os.killpg(run.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with app_with_workers(tmp_path_factory.mktemp("app")) as srv:
        yield srv


def test_page_is_served_and_url_printed(server: Server):
    status, html = http_get(server.url)
    assert status == 200
    assert "<title>stpp</title>" in html or "stpp" in html
    deadline = time.monotonic() + 10
    while server.url not in server.stdout_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.url in server.stdout_path.read_text()
    assert (server.workspace / "stpp.db").is_file()


def test_project_list_shows_the_demo_with_counts(server: Server):
    from gradio_client import Client

    client = Client(server.url, verbose=False, download_files=False)
    table = client.predict(api_name="/list_projects")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    demo = rows["camvid-demo"]
    assert (demo["labelled"], demo["unlabelled"], demo["validation"]) == (12, 60, 12)
    assert (demo["ground-truth masks"], demo["reference masks"]) == (24, 60)


def test_ui_does_not_import_torch():
    code = "import sys, ui; bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; sys.exit(str(bad) if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_workspace_file_exits_2(tmp_path: Path):
    path = tmp_path / "a-file"
    path.write_text("keep me")
    result = run_app("--workspace", str(path))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "is a file")
    assert path.read_text() == "keep me"


def test_bad_workspace_uncreatable_exits_2(tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    result = run_app("--workspace", str(tmp_path / "a-file" / "workspace"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "cannot create")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_bad_workspace_unwritable_exits_2(tmp_path: Path):
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(0o555)
    try:
        result = run_app("--workspace", str(path))
        assert result.returncode == 2
        assert_one_line_error(result.stderr, "not writable")
        assert list(path.iterdir()) == []
    finally:
        path.chmod(0o755)


def test_store_from_a_newer_schema_exits_2_untouched(tmp_path: Path):
    from stpp.store import SCHEMA_VERSION, open_store

    workspace = tmp_path / "workspace"
    open_store(workspace).close()
    conn = sqlite3.connect(workspace / "stpp.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in workspace.rglob("*") if p.is_file()}
    result = run_app("--workspace", str(workspace))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "newer")
    after = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in workspace.rglob("*") if p.is_file()}
    assert after == before


def assert_one_line_error(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("stpp: error:") and fragment in lines[0], stderr


@pytest.mark.browser
def test_browser_shows_the_demo_project(server: Server, tmp_path: Path):
    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed")
    from stpp.store import create_project, find_project, open_store

    # Written by another process after the app started: the page must re-read the store on load.
    with open_store(server.workspace) as store:
        if find_project(store, "added-later") is None:
            create_project(store, "added-later", {"classes": ["a", "b"]})

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chrome(tmp_path / "chrome-profile") as driver:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        wait.until(lambda d: {"camvid-demo", "added-later"}
                   <= set(d.find_element(By.ID, "projects-table").text.split()))
        assert "camvid-demo" in driver.find_element(By.TAG_NAME, "body").text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "app-projects.png"))


@pytest.mark.browser
def test_a_reload_or_a_shared_link_opens_the_same_project_and_tab(server: Server, tmp_path: Path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from stpp.store import create_project, find_project, open_store

    with open_store(server.workspace) as store:
        if find_project(store, "added-later") is None:
            create_project(store, "added-later", {"classes": ["a", "b"]})

    with headless_chrome(tmp_path / "chrome-profile") as driver:
        wait = WebDriverWait(driver, 60, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

        def tab_button(title: str):
            return next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title)

        def selected_tab() -> str:
            return next((b.text for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                         if b.get_attribute("aria-selected") == "true"), "")

        def project_in(element_id: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#{element_id} input").get_attribute("value")

        def loaded() -> bool:  # the page has filled its project list
            return "camvid-demo" in driver.find_element(By.ID, "projects-table").text.split()

        driver.get(server.url)
        wait.until(lambda d: selected_tab() == "Projects" and loaded())
        tab_button("Train").click()  # a tab's content is drawn when it is first opened
        wait.until(lambda d: "tab=train" in d.current_url and project_in("train-project") == "camvid-demo")
        picker = driver.find_element(By.CSS_SELECTOR, "#train-project input")
        picker.click()
        picker.send_keys(Keys.CONTROL, "a")
        picker.send_keys("added-later")
        picker.send_keys(Keys.ENTER)
        wait.until(lambda d: "project=added-later" in d.current_url)

        driver.refresh()
        wait.until(lambda d: selected_tab() == "Train" and project_in("train-project") == "added-later")

        # A link names the place; names of no project or tab leave the defaults.
        driver.get(f"{server.url}?project=camvid-demo&tab=review")
        wait.until(lambda d: selected_tab() == "Review" and project_in("review-project") == "camvid-demo")
        driver.get(f"{server.url}?project=no-such-project&tab=no-such-tab")
        wait.until(lambda d: selected_tab() == "Projects" and loaded())
        tab_button("Train").click()
        wait.until(lambda d: project_in("train-project") == "camvid-demo")


@pytest.mark.browser
def test_the_run_a_person_picks_is_the_pages_run_in_every_tab_and_its_address(server: Server, tmp_path: Path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from stpp.core.config import get_preset
    from stpp.store import create_project, find_project
    from stpp.store.runs import record_imported_run

    with open_store(server.workspace) as store:  # two finished runs of a project of their own
        if find_project(store, "two-runs") is None:
            create_project(store, "two-runs", {"classes": ["a", "b"]})
        older, newer = (record_imported_run(store, "two-runs", get_preset("test"), "done").id for _ in range(2))

    with headless_chrome(tmp_path / "chrome-profile") as driver:
        wait = WebDriverWait(driver, 60, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

        def open_tab(title: str) -> None:
            next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title).click()

        def run_in(element_id: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#{element_id} input").get_attribute("value")

        # A link names the run: the tabs that list it open on it, not on the project's newest run.
        driver.get(f"{server.url}?project=two-runs&tab=export&run={older}")
        wait.until(lambda d: run_in("export-run").startswith(f"#{older} "))
        open_tab("Predict")
        wait.until(lambda d: run_in("predict-run").startswith(f"#{older} "))

        # A run picked in one tab is the page's run: in the address, in the other tabs, across a reload.
        picker = driver.find_element(By.CSS_SELECTOR, "#predict-run input")
        picker.click()
        picker.send_keys(Keys.CONTROL, "a")
        picker.send_keys(f"#{newer} ")
        wait.until(lambda d: any(o.text.startswith(f"#{newer} ")
                                 for o in d.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")))
        next(o for o in driver.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")
             if o.text.startswith(f"#{newer} ")).click()
        wait.until(lambda d: f"run={newer}" in d.current_url)
        open_tab("Train")
        wait.until(lambda d: run_in("train-run").startswith(f"#{newer} "))
        open_tab("Export")
        wait.until(lambda d: run_in("export-run").startswith(f"#{newer} "))
        driver.refresh()
        wait.until(lambda d: run_in("export-run").startswith(f"#{newer} ") and f"run={newer}" in d.current_url)

        # A run of another project, or none, leaves each tab on the project's newest run.
        driver.get(f"{server.url}?project=two-runs&tab=export&run=999999")
        wait.until(lambda d: run_in("export-run").startswith(f"#{newer} "))


# The Projects tab's actions, without a browser ------------------------------------------------


@pytest.fixture
def services(workspace: Path):
    from stpp.store import open_store
    from ui import Services, Settings

    with open_store(workspace) as store:
        yield Services(store=store, settings=Settings(workspace=store.workspace, demo_dir=REPO / "data" / "demo"))


def test_class_table_reads_hex_and_rgb_colours_and_fills_missing_ones():
    import pandas as pd

    from stpp.core.classes import DataError, default_palette
    from ui.tabs.projects import CLASS_COLUMNS, classes_frame, classes_from_frame

    frame = pd.DataFrame([["sky", "#8080FF"], ["", ""], [" road ", "128, 64,128"], ["car", None]],
                         columns=CLASS_COLUMNS)
    classes = classes_from_frame(frame)
    assert classes.names == ("sky", "road", "car")
    assert classes.palette == ((128, 128, 255), (128, 64, 128), default_palette(3)[2])
    assert classes_frame(classes).values.tolist() == [["sky", "#8080ff"], ["road", "#804080"], ["car", "#008000"]]
    for rows, fragment in (([["a", "red"]], "colour of 'a' is 'red'"), ([["a", ""], ["a", ""]], "duplicate"),
                           ([["", ""]], "empty")):
        with pytest.raises(DataError, match=fragment):
            classes_from_frame(pd.DataFrame(rows, columns=CLASS_COLUMNS))


def test_class_files_are_read_with_the_line_at_fault(tmp_path: Path):
    from stpp.core.classes import DataError
    from ui.tabs.projects import read_class_file

    assert read_class_file(REPO / "data" / "demo" / "classes.json").num_classes == 11
    labelmap = tmp_path / "labelmap.txt"
    labelmap.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\n")
    assert read_class_file(labelmap).names == ("background", "road")
    labelmap.write_text("background:0,0,0::\nroad:128,64::\n")
    with pytest.raises(DataError, match=r"labelmap.txt, line 2: colour"):
        read_class_file(labelmap)


def test_create_open_demo_and_delete_with_confirmation(services):
    import pandas as pd

    from stpp.core.config import get_preset
    from stpp.store import StoreError, find_project, list_projects
    from stpp.store.runs import create_run
    from ui.tabs.projects import CLASS_COLUMNS, create, delete, open_demo, usage_markdown

    assert create(services, "roads", pd.DataFrame([["road", "#804080"]], columns=CLASS_COLUMNS)) == "roads"
    with pytest.raises(StoreError, match="already exists"):
        create(services, "roads", pd.DataFrame([["road", ""]], columns=CLASS_COLUMNS))
    assert open_demo(services) == "camvid-demo"
    assert "takes" in usage_markdown(services, "camvid-demo") and "MB" in usage_markdown(services, "camvid-demo")
    assert services.default_project() == "camvid-demo"

    with pytest.raises(StoreError, match="type the project's name"):
        delete(services, "roads", "road")
    create_run(services.store, "roads", get_preset("test"))
    with pytest.raises(StoreError, match="is queued; cancel it"):
        delete(services, "roads", "roads")
    thumbs = services.settings.thumbnail_dir / str(find_project(services.store, "camvid-demo").id)
    thumbs.mkdir(parents=True)
    delete(services, "camvid-demo", "camvid-demo")
    assert [p.name for p in list_projects(services.store)] == ["roads"] and not thumbs.exists()
    assert services.default_project() == "roads"
