"""The Data tab: its report and thumbnails in-process, and in a real browser against ``python app.py``:
create a project from the demo data through the page, and upload a folder with a corrupt image and
a mask of the wrong size."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from browser import headless_chrome
from PIL import Image
from test_app import ARTIFACTS, REPO, Server

DEMO_DIR = REPO / "data" / "demo"
PROJECT = "camvid-upload"


def demo_ids(split: str) -> list[str]:
    return (DEMO_DIR / f"{split}.txt").read_text().split()


def zip_demo_split(split: str, out: Path) -> Path:
    """The demo split's images and masks as ``images/`` and ``masks/`` in a zip."""
    with zipfile.ZipFile(out, "w") as archive:
        for image_id in demo_ids(split):
            archive.write(DEMO_DIR / "images" / f"{image_id}.jpg", f"images/{image_id}.jpg")
            archive.write(DEMO_DIR / "masks" / f"{image_id}.png", f"masks/{image_id}.png")
    return out


def write_folder_with_bad_files(root: Path, num_classes: int = 11) -> Path:
    """``images/`` + ``masks/``: three good pairs, a corrupt JPEG and a mask of the wrong size.

    The corrupt image is ``broken``; the mask of ``wrongsize`` is 30x20 for a 56x40 image.
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("good1", "good2", "good3", "broken", "wrongsize"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
        mask_size = (30, 20) if name == "wrongsize" else (56, 40)
        mask = rng.integers(0, num_classes, (mask_size[1], mask_size[0]), dtype=np.uint8)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{name}.png")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return root


# In-process -------------------------------------------------------------------------------------


@pytest.fixture
def services(workspace: Path):
    from stpp.store import create_project, open_store
    from ui import Services, Settings

    with open_store(workspace) as store:
        create_project(store, PROJECT, DEMO_DIR / "classes.json")
        yield Services(store=store, settings=Settings(workspace=store.workspace))


def test_report_names_uploads_as_uploaded_and_puts_problems_first(services, tmp_path: Path):
    from ui.tabs.data import add_files, report_frame, summary_markdown

    folder = write_folder_with_bad_files(tmp_path / "upload")
    archive = zip_demo_split("labeled", tmp_path / "labelled.zip")
    uploads = [str(p) for p in sorted(folder.rglob("*.*"))] + [str(archive)]
    report = add_files(services, PROJECT, "labelled", uploads)
    frame = report_frame(report, uploads)
    assert frame["status"].tolist() == ["failed"] * 2 + ["added"] * 15
    failed = {row.image: row for row in frame.itertuples() if row.status == "failed"}
    assert failed["broken"].file == "broken.jpg" and "corrupt" in failed["broken"].reason
    assert failed["wrongsize"].file == "wrongsize.png"
    assert "mask is 30x20, its image is 56x40" in failed["wrongsize"].reason
    assert f"labelled.zip:images/{demo_ids('labeled')[0]}.jpg" in frame["file"].tolist()
    assert "15 added, 0 skipped, 2 failed" in summary_markdown(report, PROJECT, "labelled")


def test_gallery_pages_cached_thumbnails_with_masks_over_labelled_images(services, tmp_path: Path):
    from stpp.store import ingest_files
    from ui.tabs.data import PAGE_SIZE, counts_markdown, gallery_page

    ingest_files(services.store, PROJECT, [zip_demo_split("unlabeled", tmp_path / "u.zip")], "unlabelled")
    ingest_files(services.store, PROJECT, [zip_demo_split("labeled", tmp_path / "l.zip")], "labelled")
    counts = counts_markdown(services, PROJECT)
    assert "12 labelled · 60 unlabelled (60 with reference masks) · 0 validation" in counts

    items, where, page = gallery_page(services, PROJECT, "unlabelled", 9)
    assert page == 3 and len(items) == 60 - 2 * PAGE_SIZE and where == "Page 3 of 3 · unlabelled images 49–60 of 60"
    labelled, _, _ = gallery_page(services, PROJECT, "labelled", 1)
    assert len(labelled) == 12 and labelled[0][1].startswith(sorted(demo_ids("labeled"))[0])
    path = Path(labelled[0][0])
    assert path.parent.parent == services.settings.thumbnail_dir and max(Image.open(path).size) <= 192
    # The labelled thumbnail has the mask blended in; the same image unmasked is a different file.
    assert "-plain" not in path.name and all("-plain" in Path(p).name for p, _ in items)
    before = path.stat().st_mtime_ns
    assert gallery_page(services, PROJECT, "labelled", 1)[0] == labelled and path.stat().st_mtime_ns == before
    assert gallery_page(services, None, "labelled", 1) == ([], "", 1)


def test_uploads_are_deleted_from_gradios_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ui.tabs.data import discard_uploads

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    uploaded = tmp_path / "gradio" / "0123abcd" / "labelled.zip"
    uploaded.parent.mkdir(parents=True)
    uploaded.write_bytes(b"zip")
    own = tmp_path / "mine" / "labelled.zip"
    own.parent.mkdir()
    own.write_bytes(b"zip")
    discard_uploads([str(uploaded), str(own)])
    assert not uploaded.parent.exists() and own.read_bytes() == b"zip"


# In the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data-tab")
    srv = Server(root / "workspace", root, "--no-demo")
    try:
        srv.wait_until_up()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def driver(tmp_path: Path):
    with headless_chrome(tmp_path / "chrome-profile", 1280, 1800) as chrome:
        yield chrome


class Page:
    """Small helpers over the stpp page: tabs, text of an element, uploads."""

    def __init__(self, driver, timeout: float = 90):
        self.driver = driver
        self.timeout = timeout

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        return self.find(f"#{element_id}").text

    def until(self, condition, message=None, timeout: float | None = None):
        """Wait until ``condition()`` is true (missing and replaced elements count as not yet); returns it.

        ``message`` (a string, or a callable evaluated on failure) explains a timeout.
        """
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.25,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        try:
            return wait.until(lambda d: condition())
        except TimeoutException:
            raise AssertionError(message() if callable(message) else message or "timed out") from None

    def tab(self, title: str) -> None:
        from selenium.webdriver.common.by import By

        self.until(lambda: [b for b in self.driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                            if b.text == title], f"no {title} tab")
        next(b for b in self.driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == title).click()

    def upload(self, element_id: str, *paths: Path) -> None:
        """Give files (or one folder) to a gr.File and wait until the upload is done."""
        self.find(f"#{element_id} input[type=file]").send_keys("\n".join(str(p) for p in paths))
        self.until(lambda: not self.driver.find_elements("css selector", f"#{element_id} .uploading")
                   and self.driver.find_elements("css selector", f"#{element_id} .file-preview, #{element_id} table"),
                   f"the upload to {element_id} did not finish")

    def add(self, role: str, element_id: str, *paths: Path) -> str:
        """Upload to the Data tab as ``role`` (``labelled`` ...) and press "Add to project"; returns the summary."""
        from selenium.webdriver.common.by import By

        next(label for label in self.driver.find_elements(By.CSS_SELECTOR, "#data-role label")
             if label.text.lower().startswith(role)).click()
        self.upload(element_id, *paths)
        before = self.text("data-summary")
        self.find("#data-add").click()
        self.until(lambda: (lambda text: text != before and f"({role}):" in text and "processing" not in text)(
            self.text("data-summary")), "no ingestion summary")
        return self.text("data-summary")


@pytest.mark.browser
def test_create_a_project_from_the_demo_data_and_see_bad_files_reported(server: Server, driver, tmp_path: Path):
    from selenium.webdriver.common.by import By

    page = Page(driver)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    driver.get(server.url)

    # Projects tab: a new project, its classes read from the demo's classes.json.
    page.until(lambda: page.find("#projects-new").is_displayed())
    page.find("#projects-new button, #projects-new .label-wrap").click()
    name = page.until(lambda: page.find("#projects-new-name input, #projects-new-name textarea"), "no name box")
    page.until(name.is_displayed, "the New project section did not open")
    name.send_keys(PROJECT)
    page.upload("projects-class-file", DEMO_DIR / "classes.json")
    page.until(lambda: "Read 11 classes" in page.text("projects-message"))
    page.until(lambda: "bicyclist" in page.text("projects-classes") and "bicyclist" in page.text("projects-swatches"))
    page.find("#projects-create").click()
    page.until(lambda: f"Created project {PROJECT}" in page.text("projects-message"), page.text("projects-message"))
    page.until(lambda: PROJECT in page.text("projects-table"))
    page.until(lambda: page.find("#projects-current input").get_attribute("value") == PROJECT)

    # Data tab: the new project is the open one; the demo's three splits, one zip each.
    page.tab("Data")
    page.until(lambda: page.find("#data-project input").get_attribute("value") == PROJECT)
    for role, split, count in (("labelled", "labeled", 12), ("unlabelled", "unlabeled", 60),
                               ("validation", "val", 12)):
        summary = page.add(role, "data-files", zip_demo_split(split, uploads / f"{split}.zip"))
        assert f"{count} added, 0 skipped, 0 failed" in summary, summary
    page.until(lambda: "12 labelled · 60 unlabelled (60 with reference masks) · 12 validation"
               in page.text("data-counts"), page.text("data-counts"))
    page.until(lambda: "validation images 1–12 of 12" in page.text("data-where"))
    page.until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#data-gallery img")) >= 12)

    # A folder with a corrupt image and a mask of the wrong size: both reported, the rest added.
    folder = write_folder_with_bad_files(tmp_path / "folder")
    summary = page.add("labelled", "data-folder", folder)
    assert "3 added, 0 skipped, 2 failed" in summary, summary
    page.until(lambda: "broken" in page.text("data-report") and "wrongsize" in page.text("data-report"))
    report = page.text("data-report")
    assert "corrupt or truncated image" in report and "mask is 30x20, its image is 56x40" in report, report
    page.until(lambda: "15 labelled" in page.text("data-counts"))
    page.until(lambda: "labelled images 1–15 of 15" in page.text("data-where"))
    page.until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#data-gallery img")) >= 15)

    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "tabs-data.png"))
    for title, element_id in (("Projects", "projects-table"), ("Train", "train-launch")):
        page.tab(title)
        page.until(lambda: page.find(f"#{element_id}").is_displayed())
        if title == "Projects":  # opening the tab shows what the Data tab added, without a Refresh
            page.until(lambda: "15" in page.text("projects-table").split(), page.text("projects-table"))
        driver.save_screenshot(str(ARTIFACTS / f"tabs-{title.lower()}.png"))
    from stpp.store import open_store, project_summary

    with open_store(server.workspace) as store:
        summary = project_summary(store, PROJECT)
    assert summary.images == {"labelled": 15, "unlabelled": 60, "validation": 12}
    assert json.loads((DEMO_DIR / "classes.json").read_text())["classes"] == list(summary.project.classes.names)
