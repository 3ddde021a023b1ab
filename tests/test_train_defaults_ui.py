"""ST++ launched from the Train tab with the form as it comes, in a real browser against a real ``python app.py``.

Issue 14: the first ST++ run launched from the browser failed, with the form's defaults (TTA on, review between
phases on), while every browser test had switched TTA and review off. Here only the epochs are lowered: the run
pauses for review after the ranking and after stage 1, the Phases tab continues it each time, and it ends done.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_app import ARTIFACTS
from test_data_tab import Page, driver  # noqa: F401 (a fixture)
from test_jobs import log_of
from test_train_tab import server  # noqa: F401 (a fixture)

from stpp.core.events import Activity
from stpp.jobs import form_defaults
from stpp.services.review import pauses_reached
from stpp.store import DEMO_PROJECT, open_store
from stpp.store.runs import get_run, list_events

PRESET = "test"
PHASE_TIMEOUT_S = 300
"""The longest wait for one phase of the run (the demo's 240x180 images, TTA on, two shared cores)."""


def worker_log(workspace: Path, run_id: int):
    """A callable for :meth:`Page.until`: the run's row and the end of its worker's log, read on a timeout."""
    def read() -> str:
        with open_store(workspace) as store:
            return f"{get_run(store, run_id)}\n{log_of(store, run_id)}"
    return read


def progress_status(page: Page) -> str:
    """The Train tab's run status, from its progress bar; a run that failed or was cancelled fails the test."""
    status = page.find("#train-progress .stpp-progress").get_attribute("data-status")
    assert status not in ("failed", "cancelled"), page.text("train-status")
    return status


def phases_show(page: Page, status: str, reached: str) -> bool:
    """The Phases tab shows the run with ``status`` (as people read it) and the pauses ``reached``."""
    text = page.text("phases-status")
    assert " is failed" not in text and " is cancelled" not in text, text
    return f" is {status}" in text and (f"reached: {reached}" in text if reached else "reached:" not in text)


def continue_to_the_next_phase(page: Page) -> None:
    """Press the Phases tab's Continue (the run pauses again at its next review point, if it has one)."""
    page.until(lambda: page.find("#phases-continue").is_enabled(), "Continue is not offered")
    page.find("#phases-continue").click()


@pytest.mark.browser
def test_st_pp_with_the_forms_defaults_pauses_for_review_and_continues_to_done(server, driver):  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    page = Page(driver)
    defaults = form_defaults(PRESET)
    driver.get(server.url)
    page.tab("Train")
    page.until(lambda: page.find("#train-project input").get_attribute("value") == DEMO_PROJECT)
    preset = page.find("#train-preset input")
    preset.click()
    preset.send_keys(Keys.CONTROL, "a")
    preset.send_keys(PRESET, Keys.ENTER)
    page.until(lambda: page.find("#train-batch input").get_attribute("value") == str(defaults["batch_size"])
               and page.find("#train-crop input").get_attribute("value") == str(defaults["crop_size"]),
               "the form did not take the preset's values")
    # Fewer epochs keep it to minutes on two cores; every other field stays as the form offers it.
    for element_id, epochs in (("train-epochs", 3), ("train-student-epochs", 1)):
        box = page.find(f"#{element_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(epochs), Keys.TAB)
    assert "ST++" in page.find("#train-method input:checked").find_element("xpath", "..").text
    assert page.find("#train-tta input").is_selected() and defaults["tta"]
    assert page.find("#train-stage3 input").is_selected() == defaults["stage3"]
    assert page.find("#train-review input").is_selected()
    page.find("#train-launch").click()
    launched = page.until(lambda: re.search(r"Run (\d+) launched at ", page.text("train-message")),
                          lambda: page.text("train-message"))
    run_id = int(launched[1])
    log = worker_log(server.workspace, run_id)

    page.until(lambda: progress_status(page) == "awaiting_review", log, timeout=PHASE_TIMEOUT_S)
    assert "status: awaiting review" in page.text("train-status")

    # The run started after the page loaded: opening a tab brings it into the tab's list, no Refresh.
    page.tab("Review")
    page.until(lambda: "awaiting review" in page.text("review-status")
               and f"#{run_id} " in page.find("#review-run input").get_attribute("value"), log)
    page.tab("Phases")
    page.until(lambda: phases_show(page, "awaiting review", "ranking"), log)
    continue_to_the_next_phase(page)
    page.until(lambda: phases_show(page, "awaiting review", "ranking, stage1"), log, timeout=PHASE_TIMEOUT_S)
    page.until(lambda: "stage1" in page.text("phases-quality-table"), log)
    ARTIFACTS.mkdir(exist_ok=True)
    page.driver.save_screenshot(str(ARTIFACTS / "tour-phases.png"))
    continue_to_the_next_phase(page)
    page.until(lambda: phases_show(page, "done", "ranking, stage1"), log, timeout=PHASE_TIMEOUT_S)
    assert "100%" in page.text("phases-status")
    page.until(lambda: "stage2" in page.text("phases-miou"))
    page.tab("Train")
    page.until(lambda: progress_status(page) == "done" and "status: done" in page.text("train-status"))
    assert page.find("#train-progress .stpp-progress").get_attribute("data-progress") == "1.0000"
    assert "launched at" in page.text("train-message")  # what was done, not a status that went stale
    page.driver.save_screenshot(str(ARTIFACTS / "tour-train.png"))
    # Export and Predict, opened after the run ended, show it done with its students' models.
    for title, prefix in (("Export", "export"), ("Predict", "predict")):
        page.tab(title)
        page.until(lambda: "done" in page.find(f"#{prefix}-run input").get_attribute("value"), log)
        stage = page.find(f"#{prefix}-stage input")
        stage.click()
        page.until(lambda: "stage2" in [o.text for o in page.driver.find_elements("css selector", "ul[role=listbox] li")])
        stage.send_keys(Keys.ESCAPE)
        page.driver.save_screenshot(str(ARTIFACTS / f"tour-{prefix}.png"))

    with open_store(server.workspace) as store:
        run = get_run(store, run_id)
        assert (run.status, run.progress, run.error) == ("done", 1.0, None)
        assert run.config["pseudo"]["tta"] is True and run.config["optim"]["epochs"] == 3
        assert run.review_plan == ("ranking", "stage1") and pauses_reached(store, run_id) == ("ranking", "stage1")
        passes = {e.stage for e in list_events(store, run_id, kinds=["labels"])}
        assert str(Activity.stability(run.config["pseudo"]["num_checkpoints"], labels_too=True)) in passes
        pseudo = dict(store.db.execute("SELECT stage, COUNT(*) FROM masks WHERE kind = 'pseudo' AND run_id = ? "
                                       "GROUP BY stage", [run_id]).fetchall())
        assert pseudo == {"teacher": 60, "stage1": 30}
