"""The Train tab in a real browser against a real ``python app.py``: launch an ST++ run on the demo
project, watch it move and finish, and see a second launch refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import headless_chrome
from test_app import ARTIFACTS, Server, app_with_workers

from stpp.jobs import form_defaults
from stpp.store import open_store

RUN_TIMEOUT_S = 420


@pytest.fixture
def server(tmp_path: Path):
    with app_with_workers(tmp_path) as srv:
        yield srv


@pytest.fixture
def driver(tmp_path: Path):
    with headless_chrome(tmp_path / "chrome-profile", 1280, 2200) as chrome:
        yield chrome


@pytest.mark.browser
def test_launch_an_st_pp_run_and_watch_it_finish(server: Server, driver):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, 60, ignored_exceptions=ignored)
    text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731

    def field(element_id: str):
        return driver.find_element(By.CSS_SELECTOR, f"#{element_id} input")

    def type_into(element_id: str, value: str) -> None:
        box = field(element_id)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)

    driver.get(server.url)
    wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Train"])
    next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Train").click()
    wait.until(lambda d: field("train-project").get_attribute("value") == "camvid-demo")

    assert "Preset tiny: the demo project on CPU" in " ".join(text("train-preset-note").split())  # the default
    preset = field("train-preset")
    preset.click()
    preset.send_keys(Keys.CONTROL, "a")
    preset.send_keys("test")
    preset.send_keys(Keys.ENTER)
    wait.until(lambda d: field("train-batch").get_attribute("value") == str(form_defaults("test")["batch_size"])
               and field("train-crop").get_attribute("value") == str(form_defaults("test")["crop_size"]))
    wait.until(lambda d: "Preset test: the test suite's" in " ".join(text("train-preset-note").split()))
    type_into("train-epochs", "3")
    type_into("train-student-epochs", "1")
    tta = field("train-tta")
    if tta.is_selected():
        tta.click()  # seconds, not minutes, on two shared cores
    review = field("train-review")
    if review.is_selected():
        review.click()  # the paper's back-to-back phases: this test waits for "done"
    assert "ST++" in driver.find_element(By.CSS_SELECTOR, "#train-method input:checked").find_element(
        By.XPATH, "..").text
    driver.find_element(By.ID, "train-launch").click()
    wait.until(lambda d: "Run 1 launched at " in text("train-message"))
    wait.until(lambda d: "run=1" in d.current_url)  # the launched run is the page's run: a reload keeps it

    # A second launch on the same project, while the first one is unfinished, is refused on the page.
    driver.find_element(By.ID, "train-launch").click()
    wait.until(lambda d: "Not launched" in text("train-message"))
    assert "already has an unfinished run" in text("train-message")

    seen: set[float] = set()

    def progress_recorded_until_done(d) -> bool:
        bar = d.find_element(By.CSS_SELECTOR, "#train-progress .stpp-progress")
        seen.add(float(bar.get_attribute("data-progress")))
        assert bar.get_attribute("data-status") not in ("failed", "cancelled"), text("train-status")
        return bar.get_attribute("data-status") == "done"

    WebDriverWait(driver, RUN_TIMEOUT_S, poll_frequency=0.5, ignored_exceptions=ignored).until(
        progress_recorded_until_done)
    assert len({v for v in seen if 0 < v < 1}) >= 2, f"the progress did not move: {sorted(seen)}"
    wait.until(lambda d: "Validation mIoU (%)" in text("train-status") and "stage2" in text("train-status"))
    assert "status: done" in text("train-status")
    wait.until(lambda d: "run_end" in text("train-events"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#train-loss g.mark-line path"))
    # One line over the stages one after the other; the caption says where each stage's steps lie.
    spans = wait.until(lambda d: re.search(r"teacher: steps 1-(\d+) · stage1: steps (\d+)-(\d+) · stage2: steps (\d+)-",
                                           " ".join(text("train-loss").split())))
    assert int(spans[2]) == int(spans[1]) + 1 and int(spans[4]) == int(spans[3]) + 1
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#train-miou g.mark-rect path")) == 3)  # a bar a stage
    wait.until(lambda d: "done" in text("train-history"))
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "train-tab.png"))


def test_the_device_choices_offer_one_run_over_all_gpus(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    import gradio as gr

    from stpp.core.devices import Device
    from ui import Services, Settings
    from ui.tabs import train

    devices = (Device("cpu", "CPU"), Device("cuda:0", "GPU 0: NVIDIA H100 (79 GB)"),
               Device("cuda:1", "GPU 1: NVIDIA H100 (79 GB)"), Device("cuda:0,1", "all 2 GPUs (torchrun)"))
    monkeypatch.setattr("stpp.jobs.detect_devices", lambda: devices)
    with open_store(workspace) as store, gr.Blocks() as page:
        train.build(Services(store=store, settings=Settings(workspace=store.workspace)))
    [dropdown] = [block for block in page.blocks.values() if getattr(block, "elem_id", None) == "train-device"]
    assert dropdown.choices == [(d.label, d.id) for d in devices]
    assert dropdown.value == "cuda:0"  # one GPU by default; all of them is a choice


def test_the_event_log_shows_a_stage_s_peak_gpu_memory(workspace: Path, synthetic_dataset: Path):
    from stpp.core.events import Event
    from stpp.headless import resolve_config
    from stpp.store import create_project
    from stpp.store.runs import create_run, record_event
    from ui import Services, Settings
    from ui.tabs import train

    with open_store(workspace) as store:
        project = create_project(store, "synth", synthetic_dataset / "classes.json")
        run = create_run(store, project, resolve_config("test", "st++", [], "cpu", project.classes))
        record_event(store, run.id, Event("stage_end", "teacher", message="teacher trained",
                                          data={"peak_memory_mb": 2269.5}))
        record_event(store, run.id, Event("eval", "teacher", miou=55.26, message="teacher: val mIoU 55.26"))
        frame = train.events_frame(Services(store=store, settings=Settings(workspace=store.workspace)), run)
    assert frame["event"].tolist() == ["eval", "stage_end"]  # newest first
    assert frame["message"].tolist() == ["teacher: val mIoU 55.26", "teacher trained (peak GPU memory 2,270 MiB)"]
