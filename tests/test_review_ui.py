"""The review flow in a real browser against a real ``python app.py``: an ST++ run of the ``test``
preset on the demo project pauses after the ranking; the Review tab shows it in stability order
with the checkpoint masks and the disagreement map; one image is accepted (keyboard), one rejected,
one corrected with a brush stroke; the Phases tab continues the run to stage 1's review and then
to the end; the Export tab's VOC zip loads with torchvision."""

from __future__ import annotations

import io
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser import headless_chrome
from PIL import Image
from test_app import ARTIFACTS, Server, app_with_workers

from stpp.core.layout import RunLayout
from stpp.core.masks import overlay, read_image, read_mask
from stpp.core.method import num_reliable
from stpp.jobs import JobRunner
from stpp.services.gallery import disagreement_image, disagreement_map
from stpp.services.review import latest_decisions
from stpp.store import get_project, open_store
from stpp.store.runs import get_run
from ui.components import enlarge

RUN_TIMEOUT_S = 600
# A short teacher at the demo's own scale: seconds per stage, masks good enough to be worth a look.
OVERRIDES = {"optim.epochs": 10, "optim.student_epochs": 1, "pseudo.tta": False, "augment.base_size": 240,
             "augment.crop_size": 128}
CAPTION = re.compile(r"#(\d+) · ([0-9.]+) · (reliable|unreliable)(?: · (\w+))?")


@pytest.fixture
def server(tmp_path: Path):
    with app_with_workers(tmp_path) as srv:
        yield srv


@pytest.fixture
def driver(tmp_path: Path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with headless_chrome(tmp_path / "chrome-profile", 1400, 2600, downloads=downloads) as chrome:
        yield chrome


def wait_status(store, runner: JobRunner, run_id: int, status: str) -> None:
    run = runner.wait(run_id, RUN_TIMEOUT_S, statuses=(status, "done", "failed", "cancelled"))
    assert run.status == status, f"run {run_id} is {run.status}: {run.error}"


def fetch_png(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.browser
def test_review_correct_continue_and_export(server: Server, driver):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    store = open_store(server.workspace)
    runner = JobRunner(store, start_grace_s=300)
    run = runner.launch("camvid-demo", "st++", "test", OVERRIDES, "cpu", review=True)
    wait_status(store, runner, run.id, "awaiting_review")
    layout = RunLayout(store.path(get_run(store, run.id).run_dir))
    classes = get_project(store, "camvid-demo").classes

    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, 120, ignored_exceptions=ignored)
    text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731

    def open_tab(title: str) -> None:
        wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title])
        next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title).click()

    def captions() -> list[tuple[int, str, str, str | None]]:
        found = [CAPTION.fullmatch(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#review-gallery .caption-label")]
        return [(int(m[1]), m[2], m[3], m[4]) for m in found if m]

    def choose(element_id: str, value: str) -> None:
        box = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value)
        box.send_keys(Keys.ENTER)

    def select_thumbnail(index: int) -> None:
        driver.find_elements(By.CSS_SELECTOR, "#review-gallery .thumbnail-item")[index].click()
        wait.until(lambda d: f"rank {index + 1} " in text("review-selected"))

    driver.get(server.url)
    open_tab("Review")
    wait.until(lambda d: "awaiting review" in text("review-status") and len(captions()) == 50)

    # The gallery is in stability order: the captions' ranks and scores are the store's.
    rows = store.db.execute("SELECT i.name, s.rank, s.stability FROM scores s JOIN images i ON i.id = s.image_id "
                            "WHERE s.run_id = ? ORDER BY s.rank", [run.id]).fetchall()
    ranked = [r[0] for r in rows]
    cut = num_reliable(len(rows), 0.5)
    assert captions() == [(rank, f"{score:.3f}", "reliable" if rank <= cut else "unreliable", None)
                          for _, rank, score in rows[:50]]
    assert "Page 1 of 2" in text("review-page-info")

    # The reliable filter shows exactly the top floor(N x R).
    choose("review-show", "reliable")
    wait.until(lambda d: f"{cut} image(s) shown" in text("review-page-info") and len(captions()) == cut)
    assert [c[0] for c in captions()] == list(range(1, cut + 1))
    choose("review-show", "all")
    wait.until(lambda d: "60 image(s) shown" in text("review-page-info") and len(captions()) == 50)

    # Selecting shows the overlay, the K checkpoint masks and the disagreement map, pixel for pixel.
    select_thumbnail(2)
    name = ranked[2]
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#review-checkpoints .thumbnail-item")) == 3
               and d.find_elements(By.CSS_SELECTOR, "#review-disagreement img"))
    image = np.asarray(read_image(store.path(store.db.execute("SELECT path FROM images WHERE name = ?",
                                                              [name]).fetchone()[0])))
    masks = [read_mask(layout.stability_dir(j) / f"{name}.png") for j in (1, 2, 3)]
    shown = fetch_png(driver.find_element(By.CSS_SELECTOR, "#review-disagreement img").get_attribute("src"))
    np.testing.assert_array_equal(shown, enlarge(disagreement_image(image, disagreement_map(masks), 3)))
    pseudo = read_mask(layout.pseudo_dir("teacher") / f"{name}.png")
    shown = fetch_png(driver.find_element(By.CSS_SELECTOR, "#review-overlay img").get_attribute("src"))
    np.testing.assert_array_equal(shown, enlarge(overlay(image, pseudo, classes.palette, 0.5)))
    assert "checkpoint 3" in text("review-checkpoints") and "Disagreement:" in text("review-selected")

    # Pointing at the large image names the class of the pixel under the cursor.
    shown_img = driver.find_element(By.CSS_SELECTOR, "#review-overlay img")
    width, height, natural_w, natural_h = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];", shown_img)
    scale = min(width / natural_w, height / natural_h)
    for dx, dy in [(-60, -40), (50, 45)]:
        ActionChains(driver).move_to_element_with_offset(shown_img, dx, dy).perform()
        reading = re.compile(r"Under the cursor: (.+) \(x (\d+), y (\d+)\)")
        wait.until(lambda d: reading.fullmatch(text("review-cursor-class")))
        found = reading.fullmatch(text("review-cursor-class"))
        x, y = int(found[2]), int(found[3])
        assert found[1] == classes.names[pseudo[y, x]]
        expected_x = (width / 2 + dx - (width - natural_w * scale) / 2) / (natural_w * scale) * pseudo.shape[1]
        expected_y = (height / 2 + dy - (height - natural_h * scale) / 2) / (natural_h * scale) * pseudo.shape[0]
        assert abs(x - expected_x) <= 1.5 and abs(y - expected_y) <= 1.5, (x, y, expected_x, expected_y)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "review-tab.png"))

    # Accept with the keyboard (the selection moves on), reject with the button.
    driver.find_element(By.TAG_NAME, "body").send_keys("a")
    wait.until(lambda d: "accepted" in text("review-message") and "rank 4 " in text("review-selected"))
    assert ranked[2] in text("review-message")
    driver.find_element(By.ID, "review-reject").click()
    wait.until(lambda d: "rejected" in text("review-message"))
    decisions = latest_decisions(store, "camvid-demo")
    assert (decisions[ranked[2]].decision, decisions[ranked[3]].decision) == ("accepted", "rejected")
    assert decisions[ranked[2]].user == "local"
    wait.until(lambda d: captions()[2][3] == "accepted" and captions()[3][3] == "rejected")

    # Correct one with a brush stroke in the lower half, in a class picked by its name.
    select_thumbnail(9)
    corrected = ranked[9]
    driver.find_element(By.CSS_SELECTOR, "#review-correct-panel button").click()
    painted = classes.names.index("car")
    wait.until(lambda d: [label for label in d.find_elements(By.CSS_SELECTOR, "#review-paint-class label")
                          if label.text.split()[-1] == "car"])[0].click()
    canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#review-editor canvas"))[-1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    wait.until(lambda d: "%" in text("review-editor"))  # the zoom level shows once the background is drawn
    stroke = ActionChains(driver).move_to_element_with_offset(canvas, -80, 70).click_and_hold()
    for dx in range(-80, 81, 8):
        stroke = stroke.move_to_element_with_offset(canvas, dx, 70)
    stroke.release().perform()
    driver.find_element(By.ID, "review-save-correction").click()
    wait.until(lambda d: "saved" in text("review-message") or "Not saved" in text("review-message"))
    message = " ".join(text("review-message").split())
    assert message == f"Correction of {corrected} saved.", message  # the image by its name, not its row id
    decision = latest_decisions(store, "camvid-demo")[corrected]
    assert decision.decision == "corrected"
    fixed, before = read_mask(store.path(decision.mask_path)), read_mask(layout.pseudo_dir("teacher") / f"{corrected}.png")
    changed = fixed != before
    assert changed.any() and set(np.unique(fixed[changed])) == {painted}
    # The change is one horizontal stroke in the lower half, painted solid along its middle line.
    ys, xs = np.nonzero(changed)
    assert ys.min() > fixed.shape[0] // 2 - 10 and ys.max() - ys.min() < 80 and xs.max() - xs.min() > 60
    middle = (ys.min() + ys.max()) // 2
    core = slice(xs.min() + 10, xs.max() - 10)
    assert (fixed[middle, core] == painted).all()

    # Fill an outline, changing only the pixels of the class the region holds most: the class picked by its key.
    select_thumbnail(10)
    filled_name = ranked[10]
    before = read_mask(layout.pseudo_dir("teacher") / f"{filled_name}.png")
    rows, cols = before.shape
    middle_block = before[int(rows * 0.45):int(rows * 0.8), int(cols * 0.3):int(cols * 0.7)]
    replaced = int(np.bincount(middle_block[middle_block < len(classes.names)].ravel()).argmax())
    fill_class = next(i for i in range(min(10, len(classes.names))) if i != replaced)
    driver.find_element(By.TAG_NAME, "body").send_keys("1234567890"[fill_class])
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#review-paint-class input:checked")[0]
               .get_attribute("value") == classes.names[fill_class])
    next(label for label in driver.find_elements(By.CSS_SELECTOR, "#review-tool label")
         if label.text == "fill outlines").click()
    choose("review-only-class", classes.names[replaced])
    canvas = driver.find_elements(By.CSS_SELECTOR, "#review-editor canvas")[-1]
    outline = ActionChains(driver).move_to_element_with_offset(canvas, -90, 10).click_and_hold()
    corners = [(90, 10), (90, 130), (-90, 130), (-90, 10)]
    start = (-90, 10)
    for end in corners:
        for t in np.linspace(0, 1, 12)[1:]:
            outline = outline.move_to_element_with_offset(
                canvas, int(start[0] + t * (end[0] - start[0])), int(start[1] + t * (end[1] - start[1])))
        start = end
    outline.release().perform()
    driver.find_element(By.ID, "review-save-correction").click()
    wait.until(lambda d: f"Correction of {filled_name}" in " ".join(text("review-message").split()))
    refilled = read_mask(store.path(latest_decisions(store, "camvid-demo")[filled_name].mask_path))
    changed = refilled != before
    assert changed.any() and set(np.unique(refilled[changed])) == {fill_class}
    assert (before[changed] == replaced).all()  # only that class's pixels changed
    # Inside the outline every pixel of that class changed, not just those under the stroke.
    ys, xs = np.nonzero(changed)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    inner = (slice(top + (bottom - top) // 5, bottom - (bottom - top) // 5),
             slice(left + (right - left) // 5, right - (right - left) // 5))
    assert (before[inner] == replaced).sum() > 50
    assert (refilled[inner][before[inner] == replaced] == fill_class).all()

    # Phases: continue to stage 1's review, then to the end.
    open_tab("Phases")
    wait.until(lambda d: d.find_element(By.ID, "phases-continue").is_enabled())
    counts = text("phases-counts")
    assert "stage1" in counts
    driver.find_element(By.ID, "phases-continue").click()
    wait.until(lambda d: get_run(store, run.id).status != "awaiting_review")
    wait_status(store, runner, run.id, "awaiting_review")
    assert get_run(store, run.id).stage == "stage1"
    wait.until(lambda d: "reached: ranking, stage1" in text("phases-status"))
    wait.until(lambda d: "stage1" in text("phases-quality-table"))
    # The ranking study below it: the run's split, the other signal, the perfect ranking and random draws.
    wait.until(lambda d: "random (20 draws)" in text("phases-ranking-table"))
    driver.execute_script("document.getElementById('phases-quality').scrollIntoView({block: 'start'})")
    driver.save_screenshot(str(ARTIFACTS / "quality-report.png"))
    study = text("phases-ranking-table")
    assert {"stability", "pixel_agreement", "perfect"} <= {line.strip() for line in study.splitlines()}, study
    assert "car" in text("phases-ranking-classes")
    assert f"the top {num_reliable(60, 0.5)} (R = 0.5)" in " ".join(text("phases-ranking-note").split())
    wait.until(lambda d: d.find_element(By.ID, "phases-finish").is_enabled())
    driver.find_element(By.ID, "phases-finish").click()
    wait.until(lambda d: get_run(store, run.id).status != "awaiting_review")
    wait_status(store, runner, run.id, "done")
    wait.until(lambda d: "done" in text("phases-status") and "stage2" in text("phases-miou"))

    # Export VOC: the zip loads with torchvision, holds the corrected mask and not the rejected image.
    open_tab("Export")
    wait.until(lambda d: f"#{run.id} ST++" in driver.find_element(By.CSS_SELECTOR, "#export-run input")
               .get_attribute("value"))
    driver.find_element(By.ID, "export-build").click()
    wait.until(lambda d: "image(s) as Pascal VOC" in text("export-message"))
    assert f"Run {run.id} (ST++" in text("export-message") and "Masks: ground truth" in text("export-message")
    driver.find_element(By.CSS_SELECTOR, "#export-manifest-panel button").click()  # the manifest is folded
    wait.until(lambda d: '"format": "voc"' in text("export-manifest"))
    wait.until(lambda d: d.find_element(By.ID, "export-download").is_displayed())
    driver.find_element(By.ID, "export-download").click()
    archive = WebDriverWait(driver, 60).until(
        lambda d: next((p for p in d.downloads.glob("*.zip")), None))
    unzipped = archive.parent / "voc"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unzipped)
    from torchvision.datasets import VOCSegmentation

    dataset = VOCSegmentation(root=str(unzipped), year="2012", image_set="train")
    names = [Path(p).stem for p in dataset.images]
    assert ranked[3] not in names and corrected in names and ranked[2] in names
    np.testing.assert_array_equal(np.asarray(dataset[names.index(corrected)][1]), fixed)
    np.testing.assert_array_equal(np.asarray(dataset[names.index(ranked[2])][1]),
                                  read_mask(layout.pseudo_dir("teacher") / f"{ranked[2]}.png"))
    store.close()
