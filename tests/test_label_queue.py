"""The "label these next" queue: a run's least stable images go out as a CVAT task zip, a person's
labels come back as ground truth, and the next run trains on them (real runs of the ``test`` preset)."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run_stpp
from PIL import Image

from stpp.core.classes import parse_labelmap
from stpp.core.label_order import LOWEST_CONFIDENCE
from stpp.core.layout import RunLayout
from stpp.core.masks import read_mask
from stpp.jobs import JobRunner
from stpp.services.label_queue import export_label_task, label_queue, task_labels
from stpp.services.review import record_decision
from stpp.store import (
    DEMO_PROJECT,
    StoreError,
    create_project,
    import_folder_dataset,
    make_classes,
    open_store,
)
from stpp.store.classes import load_classes
from stpp.store.runs import current_pseudo_masks

FAST = {"optim.epochs": 3, "optim.student_epochs": 1, "pseudo.tta": False}
# The generated dataset's classes with its class 0 renamed: a project without a "background" class,
# so the task adds one and shifts every class by one label.
CLASSES = {"classes": ["grey", "red", "green", "blue"], "palette": [[0, 0, 0], [220, 30, 30], [30, 200, 30],
                                                                    [40, 60, 230]], "ignore_index": 255}


def image_row(store, name: str) -> dict:
    return next(iter(store.db.query("SELECT id, role FROM images WHERE name = ?", [name])))


def test_task_labels_put_ignore_on_background(synthetic_dataset: Path):
    classes = load_classes(synthetic_dataset / "classes.json")
    labels, lut = task_labels(classes)  # it has a class named background: kept as it is
    assert labels.names == classes.names and (lut[:4].tolist(), lut[255]) == ([0, 1, 2, 3], 0)
    labels, lut = task_labels(make_classes(CLASSES["classes"], CLASSES["palette"]))
    assert labels.names == ("background", "grey", "red", "green", "blue")
    assert labels.palette[0] == (1, 1, 1)  # black is grey's colour here: the next free grey
    assert (lut[:4].tolist(), lut[255]) == ([1, 2, 3, 4], 0)


def to_project(task_mask: np.ndarray) -> np.ndarray:
    """A task mask's values as the project's: background (no label) is ignore, label i is class i - 1."""
    return np.where(task_mask == 0, 255, task_mask.astype(np.int64) - 1)


def test_label_task_round_trip_gives_the_next_run_ground_truth(workspace: Path, synthetic_dataset: Path,
                                                               tmp_path: Path):
    with open_store(workspace) as store:
        project = create_project(store, "synth", CLASSES)
        assert not import_folder_dataset(store, project, synthetic_dataset).failed
        runner = JobRunner(store, start_grace_s=300)
        run = runner.wait(runner.launch("synth", "st++", "test", FAST, "cpu").id, 420)
        assert run.status == "done", run.error

        ranked = [r[0] for r in store.db.execute("SELECT i.name FROM scores s JOIN images i ON i.id = s.image_id "
                                                 "WHERE s.run_id = ? ORDER BY s.rank DESC", [run.id])]
        record_decision(store, run.id, ranked[0], "accepted")  # a person's mask already: not queued
        record_decision(store, run.id, ranked[1], "rejected")  # judged wrong: worth labelling
        queue = [image.name for image in label_queue(store, run.id)]
        assert queue == ranked[1:]

        task_zip = tmp_path / "task.zip"
        result = run_stpp("project", "label-next", run.id, "--count", "3", "--out", task_zip,
                          "--workspace", workspace)
        assert "3 images to label" in result.stdout and "import-labels synth" in result.stdout
        names = ranked[1:4]
        with zipfile.ZipFile(task_zip) as zf:
            files = set(zf.namelist())
            labelmap = parse_labelmap(zf.read("labelmap.txt").decode(), "labelmap.txt")
            default = zf.read("ImageSets/Segmentation/default.txt").decode().split()
            manifest = json.loads(zf.read("manifest.json"))
            zf.extractall(tmp_path / "task")
        assert default == names
        assert files == {"labelmap.txt", "ImageSets/Segmentation/default.txt", "manifest.json",
                         *(f"JPEGImages/{n}.jpg" for n in names), *(f"SegmentationClass/{n}.png" for n in names)}
        assert labelmap.names == ("background", "grey", "red", "green", "blue")
        assert [image["name"] for image in manifest["images"]] == names
        pseudo = current_pseudo_masks(store, run.id, [image_row(store, n)["id"] for n in names])
        for name in names:
            with Image.open(tmp_path / "task" / "SegmentationClass" / f"{name}.png") as png:
                assert png.mode == "P"
                assert tuple(png.getpalette()[3:6]) == (0, 0, 0)  # grey's colour on its label, 1
                task_mask = np.array(png)
            shown = read_mask(store.path(pseudo[image_row(store, name)["id"]][1]))
            np.testing.assert_array_equal(to_project(task_mask), shown)
            with Image.open(tmp_path / "task" / "JPEGImages" / f"{name}.jpg") as jpeg:
                assert jpeg.size == (64, 64)

        # A person labels: paints blue into the first mask (kept as a palette PNG), background
        # (no label) across the second, saved as colours the way an RGB export would; the third is
        # left as it was pre-annotated.
        folder = tmp_path / "task"
        blue, expected = labelmap.names.index("blue"), {}
        first = folder / "SegmentationClass" / f"{names[0]}.png"
        with Image.open(first) as png:
            edited, palette = np.array(png), png.getpalette()
        edited[:20, :20] = blue
        painted = Image.fromarray(edited, mode="P")
        painted.putpalette(palette)
        painted.save(first)
        expected[names[0]] = to_project(edited)
        second = folder / "SegmentationClass" / f"{names[1]}.png"
        with Image.open(second) as png:
            edited = np.array(png)
        edited[30:34, :] = 0
        colours = np.array(labelmap.palette, dtype=np.uint8)[edited]
        Image.fromarray(colours, mode="RGB").save(second)
        expected[names[1]] = to_project(edited)
        with Image.open(folder / "SegmentationClass" / f"{names[2]}.png") as png:
            expected[names[2]] = to_project(np.array(png))

        result = run_stpp("project", "import-labels", "synth", "--data", folder, "--workspace", workspace,
                          "--verbose")
        assert "3 added, 0 skipped, 0 failed" in result.stdout
        for name in names:
            row = image_row(store, name)
            assert row["role"] == "labelled"
            kinds = {r[0]: r[1] for r in store.db.execute("SELECT kind, path FROM masks WHERE image_id = ?",
                                                          [row["id"]])}
            assert "reference" in kinds
            np.testing.assert_array_equal(read_mask(store.path(kinds["ground_truth"])), expected[name])
        assert [image.name for image in label_queue(store, run.id)] == ranked[4:]

        # The next run trains on them as ground truth.
        following = runner.wait(runner.launch("synth", "supervised", "test", FAST, "cpu").id, 420)
        assert following.status == "done", following.error
        layout = RunLayout(store.path(following.run_dir))
        with open(layout.train_set_path("teacher"), newline="") as handle:
            train_set = {row["id"]: row for row in csv.DictReader(handle)}
        for name in names:
            assert train_set[name]["source"] == "ground_truth"
            gt = store.db.execute("SELECT path FROM masks WHERE image_id = ? AND kind = 'ground_truth'",
                                  [image_row(store, name)["id"]]).fetchone()[0]
            assert Path(train_set[name]["mask"]) == store.path(gt)
        assert set(train_set) == {f"labeled_{i:03d}" for i in range(8)} | set(names)


def test_lowest_confidence_order_runs_the_final_teacher_once(workspace: Path, synthetic_dataset: Path,
                                                              tmp_path: Path):
    """The lowest-confidence order needs the final teacher's signals: refused without them, computed by
    ``label-next`` where they lack (with the run's default TTA), kept, and the task follows them."""
    with open_store(workspace) as store:
        project = create_project(store, "synth", CLASSES)
        assert not import_folder_dataset(store, project, synthetic_dataset).failed
        runner = JobRunner(store, start_grace_s=300)
        launched = runner.launch("synth", "st++", "test", {"optim.epochs": 3}, "cpu", review=True)
        run = runner.wait(launched.id, 420, statuses=("awaiting_review", "done", "failed", "cancelled"))
        assert run.status == "awaiting_review", run.error
        assert run.cfg.pseudo.tta  # the preset's default
        with pytest.raises(StoreError, match=f"project teacher-signals {run.id}"):
            label_queue(store, run.id, order=LOWEST_CONFIDENCE)

        task_zip = tmp_path / "task.zip"
        result = run_stpp("project", "label-next", run.id, "--count", "3", "--order", "lowest-confidence",
                          "--out", task_zip, "--workspace", workspace)
        assert "3 images to label, lowest teacher confidence first" in result.stdout
        signals_csv = RunLayout(store.path(run.run_dir)).teacher_signals_path
        with signals_csv.open(newline="") as handle:
            confidence = {row["id"]: float(row["confidence"]) for row in csv.DictReader(handle)}
        ranked = [name for name, in store.db.execute("SELECT i.name FROM scores s JOIN images i ON "
                                                     "i.id = s.image_id WHERE s.run_id = ?", [run.id])]
        assert sorted(confidence) == sorted(ranked) and all(0 < c <= 1 for c in confidence.values())
        lowest = sorted(ranked, key=lambda name: confidence[name])[:3]
        with zipfile.ZipFile(task_zip) as zf:
            default = zf.read("ImageSets/Segmentation/default.txt").decode().split()
            manifest = json.loads(zf.read("manifest.json"))
        assert default == lowest and manifest["order"] == "lowest teacher confidence first"
        assert [image["confidence"] for image in manifest["images"]] == pytest.approx(
            [confidence[name] for name in lowest], abs=1e-6)

        again = run_stpp("project", "teacher-signals", run.id, "--workspace", workspace)
        assert f"run {run.id}: teacher signals of 0 image(s) computed" in again.stdout  # kept in the run folder
        record_decision(store, run.id, lowest[0], "accepted")
        assert [image.name for image in label_queue(store, run.id, 2, LOWEST_CONFIDENCE)] == lowest[1:]


def test_a_label_task_needs_something_to_label(workspace: Path, synthetic_dataset: Path, tmp_path: Path):
    with open_store(workspace) as store:
        project = create_project(store, "synth", CLASSES)
        import_folder_dataset(store, project, synthetic_dataset)
        with pytest.raises(StoreError, match="at least one image"):
            export_label_task(store, 1, tmp_path / "t.zip", 0)
        result = run_stpp("project", "label-next", "99", "--out", tmp_path / "t.zip", "--workspace", workspace,
                          check=False)
        assert result.returncode == 2 and "no run 99" in result.stderr
        assert not (tmp_path / "t.zip").exists()


@pytest.mark.browser
def test_the_app_writes_the_task_and_takes_the_labelled_zip_back_as_ground_truth(tmp_path: Path):
    from browser import headless_chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_app import app_with_workers
    from test_data_tab import Page

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with app_with_workers(tmp_path) as server, headless_chrome(tmp_path / "profile", 1280, 1800,
                                                               downloads=downloads) as driver:
        store = open_store(server.workspace)
        runner = JobRunner(store, start_grace_s=300)
        run = runner.launch(DEMO_PROJECT, "st++", "test", FAST, "cpu", review=True)
        run = runner.wait(run.id, 420, statuses=("awaiting_review", "done", "failed", "cancelled"))
        assert run.status == "awaiting_review", run.error
        page = Page(driver)
        driver.get(server.url)
        page.tab("Review")
        page.until(lambda: "awaiting review" in page.text("review-status"))
        page.find("#review-label-next-panel button").click()
        count = page.until(lambda: page.find("#review-label-count input"))
        count.send_keys(Keys.CONTROL, "a")
        count.send_keys("3", Keys.TAB)
        page.find("#review-label-task").click()
        page.until(lambda: "3 image(s) to label, least stable first" in page.text("review-label-message"),
                   lambda: page.text("review-label-message"))
        names = [n for n, in store.db.execute("SELECT i.name FROM scores s JOIN images i ON i.id = s.image_id "
                                              "WHERE s.run_id = ? ORDER BY s.rank DESC LIMIT 3", [run.id])]
        assert all(name in page.text("review-label-message") for name in names)
        page.find("#review-label-download").click()
        task_zip = page.until(lambda: next(iter(downloads.glob("*.zip")), None), "the task was not downloaded")

        # A person labels the first image: a block of car, saved as CVAT exports it (the same layout).
        folder = tmp_path / "task"
        with zipfile.ZipFile(task_zip) as zf:
            zf.extractall(folder)
        labelmap = parse_labelmap((folder / "labelmap.txt").read_text(), "labelmap.txt")
        first = folder / "SegmentationClass" / f"{names[0]}.png"
        with Image.open(first) as png:
            edited, palette = np.array(png), png.getpalette()
        edited[:40, :60] = labelmap.names.index("car")
        painted = Image.fromarray(edited, mode="P")
        painted.putpalette(palette)
        painted.save(first)
        labelled_zip = tmp_path / "labelled.zip"
        with zipfile.ZipFile(labelled_zip, "w") as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder).as_posix())

        page.tab("Data")
        summary = page.add("labels", "data-files", labelled_zip)
        assert "3 added, 0 skipped, 0 failed" in summary, summary
        for name in names:
            row = image_row(store, name)
            assert row["role"] == "labelled"
        truth = store.db.execute("SELECT path FROM masks WHERE image_id = ? AND kind = 'ground_truth'",
                                 [image_row(store, names[0])["id"]]).fetchone()[0]
        np.testing.assert_array_equal(read_mask(store.path(truth)), to_project(edited))
        assert [image.name for image in label_queue(store, run.id)][:1] != names[:1]

        # The other order: the page has a child process compute the teacher's confidence first.
        page.tab("Review")
        page.until(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, "#review-label-order label")
                            if e.text == "lowest teacher confidence first"])[0].click()
        page.find("#review-label-task").click()
        page.until(lambda: "3 image(s) to label, lowest teacher confidence first" in page.text("review-label-message"),
                   lambda: page.text("review-label-message"), timeout=600)  # 60 images x 6 TTA views on a CPU
        with RunLayout(store.path(run.run_dir)).teacher_signals_path.open(newline="") as handle:
            confidence = {row["id"]: float(row["confidence"]) for row in csv.DictReader(handle)}
        waiting = [name for name in confidence if image_row(store, name)["role"] == "unlabelled"]
        lowest = sorted(waiting, key=lambda name: confidence[name])[:3]
        message = page.text("review-label-message")
        assert all(name in message for name in lowest), (lowest, message)
        assert sorted(lowest, key=message.index) == lowest

        # The Phases tab's ranking study reads the same file: its button finds nothing left to compute.
        page.tab("Phases")
        page.until(lambda: "random (20 draws)" in page.text("phases-ranking-table"))
        page.find("#phases-teacher-signals").click()
        page.until(lambda: "had the teacher's signals of every ranked image" in
                   page.text("phases-teacher-signals-message"), lambda: page.text("phases-teacher-signals-message"))
        page.until(lambda: {"confidence", "tta_agreement"} <= {line.strip() for line in
                                                               page.text("phases-ranking-table").splitlines()})
