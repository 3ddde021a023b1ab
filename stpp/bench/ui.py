"""How long a person waits in the app: the real ``python app.py`` driven by headless Chromium.

``python -m stpp.bench ui [--repeats N] [--json FILE]`` starts the app on a fresh workspace (the demo
project), then times, each ``--repeats`` times, from the action to what the person sees:

- ``reload``: the page loaded until the Projects table lists the demo project;
- ``launch``: *Launch training* (ST++, preset ``test``) until the page confirms the run;
- ``accept_next``: the ``a`` key on a selected image until the next image is shown;
- ``next``: *Next* until the next image is shown;
- ``save_correction``: *Save correction* after a brush stroke until the page confirms it;
- ``cli_help``: ``python -m stpp --help`` in a new process.

Prints a table (median and max seconds) and writes the figures as JSON. Needs selenium and Debian's
chromium + chromium-driver (``/usr/bin/chromium``, ``/usr/bin/chromedriver``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from stpp.backends.local import REPO_ROOT, child_env
from stpp.jobs import JobRunner
from stpp.store import open_store
from stpp.store.demo import DEMO_PROJECT
from stpp.store.runs import get_run, list_runs

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 120.0
RUN_TIMEOUT_S = 900.0
FORM_EPOCHS = {"train-epochs": "3", "train-student-epochs": "1"}
"""Fewer epochs than the preset's, so the run pauses for review within minutes on two cores."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(workspace: Path, log: Path) -> Iterator[str]:
    """``python app.py`` on ``workspace``; yields its URL once it answers."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**child_env(), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as out:
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workspace", str(workspace)],
                               cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"app.py exited with {app.returncode}; see {log}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not answer within {WAIT_S:.0f} s; see {log}") from None
                time.sleep(0.2)
        yield url
    finally:
        app.terminate()
        try:
            app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()


@contextmanager
def chrome(profile: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """What the benchmark reads and clicks on the page, by element id."""

    def __init__(self, driver):
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.waiter = WebDriverWait(driver, WAIT_S, poll_frequency=0.02,
                                    ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        return " ".join(self.find(f"#{element_id}").text.split())

    def until(self, condition: Callable[[], object]):
        return self.waiter.until(lambda _: condition())

    def tab(self, title: str) -> None:
        self.until(lambda: [b for b in self.finds("button[role=tab]") if b.text == title])[0].click()


def timed(action: Callable[[], None], seen: Callable[[], object], page: Page) -> float:
    """Seconds from ``action`` until ``seen`` holds on the page."""
    start = time.perf_counter()
    action()
    page.until(seen)
    return time.perf_counter() - start


def measure_launches(page: Page, runner: JobRunner, repeats: int) -> tuple[list[float], int]:
    """Launch ``repeats`` runs from the Train tab (each but the last cancelled); the last run's id."""
    from selenium.webdriver.common.keys import Keys

    page.tab("Train")
    page.until(lambda: page.find("#train-project input").get_attribute("value") == DEMO_PROJECT)
    preset = page.find("#train-preset input")
    preset.click()
    preset.send_keys(Keys.CONTROL, "a")
    preset.send_keys("test", Keys.ENTER)
    page.until(lambda: page.find("#train-crop input").get_attribute("value") == "48")
    for element_id, value in FORM_EPOCHS.items():
        box = page.find(f"#{element_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    seconds, run_id = [], None
    for attempt in range(repeats):
        if run_id is not None:
            runner.cancel(run_id)
            runner.wait(run_id, RUN_TIMEOUT_S)
        before = {r.id for r in list_runs(runner.store, DEMO_PROJECT)}
        seconds.append(timed(lambda: page.find("#train-launch").click(),
                             lambda: f"Run {max(before, default=0) + 1} launched" in page.text("train-message"), page))
        run_id = max(r.id for r in list_runs(runner.store, DEMO_PROJECT))
    return seconds, run_id


def measure_review(page: Page, repeats: int) -> dict[str, list[float]]:
    """Accept and step through images, and save corrections, on the Review tab of a paused run."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page.driver.refresh()
    page.tab("Review")
    page.until(lambda: "awaiting review" in page.text("review-status")
               and len(page.finds("#review-gallery .thumbnail-item")) >= 2 * repeats + 2)

    def selected_rank() -> int | None:
        words = page.text("review-selected").split()
        return int(words[words.index("rank") + 1]) if "rank" in words else None

    page.finds("#review-gallery .thumbnail-item")[0].click()
    page.until(lambda: selected_rank() == 1)
    figures: dict[str, list[float]] = {"accept_next": [], "next": [], "save_correction": []}
    body = page.find("body")
    for _ in range(repeats):
        rank = selected_rank()
        figures["accept_next"].append(timed(lambda: body.send_keys("a"), lambda: selected_rank() == rank + 1, page))
        rank = selected_rank()
        figures["next"].append(timed(lambda: page.find("#review-next").click(),
                                     lambda: selected_rank() == rank + 1, page))
    page.find("#review-correct-panel button").click()
    for attempt in range(repeats):
        if attempt:  # a new image for each correction, so each confirmation is a new message
            rank = selected_rank()
            shown = page.find("#review-overlay img").get_attribute("src")
            page.finds("#review-gallery .thumbnail-item")[rank].click()
            page.until(lambda: selected_rank() == rank + 1
                       and page.find("#review-overlay img").get_attribute("src") != shown)
        for _ in range(3):
            # A stroke made while the editor still loads the new image is lost ("nothing is painted"):
            # that try is not a timing of the save, so it is dropped and the stroke made again.
            canvas = page.until(lambda: page.finds("#review-editor canvas"))[-1]
            page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
            page.until(lambda: "%" in page.text("review-editor"))
            stroke = ActionChains(page.driver).move_to_element_with_offset(canvas, -60, 40).click_and_hold()
            for dx in range(-60, 61, 10):
                stroke = stroke.move_to_element_with_offset(canvas, dx, 40)
            stroke.release().perform()
            before = page.text("review-message")
            seconds = timed(lambda: page.driver.find_element(By.ID, "review-save-correction").click(),
                            lambda: page.text("review-message") != before
                            and ("saved" in page.text("review-message") or "Not saved" in page.text("review-message")),
                            page)
            if "nothing is painted" not in page.text("review-message"):
                break
        if "Not saved" in page.text("review-message"):
            raise RuntimeError(f"correction {attempt + 1}: {page.text('review-message')}")
        figures["save_correction"].append(seconds)
    return figures


def measure_reloads(page: Page, url: str, repeats: int) -> list[float]:
    return [timed(lambda: page.driver.get(url), lambda: DEMO_PROJECT in page.text("projects-table"), page)
            for _ in range(repeats)]


def measure_cli_help(repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stpp", "--help"], cwd=REPO_ROOT, env=child_env(), check=True,
                       capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at the start"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.bench ui", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="times each action is timed (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            print(f"error: {binary} is not installed (apt-get install chromium chromium-driver)", file=sys.stderr)
            return 2
    started = machine()
    work = Path(tempfile.mkdtemp(prefix="stpp-bench-ui-"))
    try:
        workspace = work / "workspace"
        with running_app(workspace, work / "app.log") as url, chrome(work / "profile") as driver:
            page = Page(driver)
            figures = {"reload": measure_reloads(page, url, args.repeats)}
            with open_store(workspace) as store:
                runner = JobRunner(store)
                figures["launch"], run_id = measure_launches(page, runner, args.repeats)
                run = runner.wait(run_id, RUN_TIMEOUT_S, statuses=("awaiting_review", "done", "failed", "cancelled"))
                if run.status != "awaiting_review":
                    raise RuntimeError(f"run {run_id} ended {run.status}: {get_run(store, run_id).error}")
                figures.update(measure_review(page, args.repeats))
                runner.cancel(run_id)
        figures["cli_help"] = measure_cli_help(args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"UI timings, {args.repeats} each ({started})")
    print(f"{'action':<16} {'median s':>9} {'max s':>7}")
    for name, seconds in figures.items():
        print(f"{name:<16} {statistics.median(seconds):>9.2f} {max(seconds):>7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": started, "repeats": args.repeats, "seconds": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
