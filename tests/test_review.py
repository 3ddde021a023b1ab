"""Review between phases, engine and store level (no browser): decisions, pauses, and what the
next stages train on, with real worker runs of the ``test`` preset on the generated dataset."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run_args, run_stpp
from PIL import Image

from stpp.core.config import StppConfig
from stpp.core.layout import RunLayout
from stpp.core.masks import colorize, overlay, read_mask
from stpp.core.method import num_reliable
from stpp.jobs import JobRunner
from stpp.services.gallery import (
    GalleryQuery,
    disagreement_image,
    disagreement_map,
    gallery_page,
    image_detail,
    merge_painted_layer,
)
from stpp.services.outputs import export_model_zip, predict_images
from stpp.services.quality import quality_report, run_ranking_study
from stpp.services.review import (
    ReviewError,
    continue_run,
    decision_history,
    latest_decisions,
    next_pause,
    phase_summary,
    record_decision,
    set_reliable_ratio,
)
from stpp.store import StoreError, create_project, import_folder_dataset, open_store
from stpp.store.export import export_project
from stpp.store.export_formats import VOC_ROOT
from stpp.store.reviews import LOCAL_USER
from stpp.store.runs import RunStateError, create_run, get_run, set_review_plan

FAST = {"optim.epochs": 3, "optim.student_epochs": 1, "pseudo.tta": False}
RUN_TIMEOUT_S = 420


@pytest.fixture
def store(workspace: Path, synthetic_dataset: Path):
    """A store with the generated dataset imported as project ``synth`` (unlabelled masks become references)."""
    with open_store(workspace) as opened:
        project = create_project(opened, "synth", synthetic_dataset / "classes.json")
        report = import_folder_dataset(opened, project, synthetic_dataset)
        assert not report.failed, report.failed
        yield opened


def read_train_set(layout: RunLayout, stage: str) -> dict[str, dict[str, str]]:
    with open(layout.train_set_path(stage), newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def image_id(store, name: str) -> int:
    return store.db.execute("SELECT id FROM images WHERE name = ?", [name]).fetchone()[0]


def test_reviews_decide_what_the_next_stages_train_on(store, synthetic_dataset: Path, tmp_path: Path):
    runner = JobRunner(store, start_grace_s=300)
    run = runner.launch("synth", "st++", "test", FAST, "cpu", review=True)
    assert run.review_plan == ("ranking", "stage1")
    seen: list[float] = []  # the run's progress at every poll, over all of its phases
    track = dict(on_poll=lambda polled: seen.append(polled.progress), poll_s=0.2)
    run = runner.wait(run.id, RUN_TIMEOUT_S, statuses=("awaiting_review", "done", "failed", "cancelled"), **track)
    assert run.status == "awaiting_review", run.error
    layout = RunLayout(store.path(run.run_dir))
    assert layout.scores_path.is_file() and not (layout.root / "checkpoints" / "stage1.pt").exists()
    assert next_pause(store, run.id) == "stage1"

    ranked = [r["name"] for r in store.db.query("SELECT i.name FROM scores s JOIN images i ON i.id = s.image_id "
                                                "WHERE s.run_id = ? ORDER BY s.rank", [run.id])]
    assert len(ranked) == 16
    accepted, rejected, corrected = ranked[0], ranked[1], ranked[-1]
    teacher_mask = read_mask(layout.pseudo_dir("teacher") / f"{accepted}.png")
    record_decision(store, run.id, accepted, "accepted")
    record_decision(store, run.id, rejected, "accepted", user="ann")
    record_decision(store, run.id, rejected, "rejected", user="ann")  # the latest decision wins
    fixed = read_mask(layout.pseudo_dir("teacher") / f"{corrected}.png").copy()
    fixed[:16, :16] = 3
    record_decision(store, run.id, image_id(store, corrected), "corrected", mask=fixed)
    with pytest.raises(ReviewError, match="not unlabelled"):
        record_decision(store, run.id, "labeled_000", "rejected")
    with pytest.raises(ReviewError, match="64x64"):
        record_decision(store, run.id, corrected, "corrected", mask=fixed[:10])
    for decision in ("accepted", "rejected"):  # an edited mask is never dropped silently
        with pytest.raises(ReviewError, match="only a correction takes a mask"):
            record_decision(store, run.id, corrected, decision, mask=fixed)

    latest = latest_decisions(store, "synth")
    assert {n: d.decision for n, d in latest.items()} == {accepted: "accepted", rejected: "rejected",
                                                           corrected: "corrected"}
    assert latest[accepted].user == LOCAL_USER and latest[rejected].user == "ann"
    assert [d.decision for d in decision_history(store, "synth", rejected)] == ["rejected", "accepted"]
    reviewed_files = {name: store.path(latest[name].mask_path) for name in (accepted, corrected)}
    np.testing.assert_array_equal(read_mask(reviewed_files[accepted]), teacher_mask)
    np.testing.assert_array_equal(read_mask(reviewed_files[corrected]), fixed)
    reviewed_bytes = {name: path.read_bytes() for name, path in reviewed_files.items()}

    check_views(store, run.id, layout, ranked, {accepted: "accepted", rejected: "rejected", corrected: "corrected"})

    summary = phase_summary(store, run.id, ratio=0.25)
    assert (summary.pause, summary.next_phase, summary.ranked) == ("ranking", "stage1", 16)
    assert (summary.accepted, summary.rejected, summary.corrected, summary.labelled) == (1, 1, 1, 8)
    assert summary.reliable + summary.unreliable == 13

    # Stage 1 with R = 0.25 chosen in review: the top floor(16 x 0.25) = 4 are reliable.
    run = continue_run(runner, run.id, reliable_ratio=0.25)
    assert run.config["selftrain"]["reliable_ratio"] == 0.25
    run = runner.wait(run.id, RUN_TIMEOUT_S, statuses=("awaiting_review", "done", "failed", "cancelled"), **track)
    assert run.status == "awaiting_review", run.error
    assert json.loads(layout.config_path.read_text())["selftrain"]["reliable_ratio"] == 0.25
    reliable = {r["name"] for r in store.db.query("SELECT i.name FROM scores s JOIN images i ON i.id = s.image_id "
                                                  "WHERE s.run_id = ? AND s.reliable = 1", [run.id])}
    assert reliable == set(ranked[:num_reliable(16, 0.25)])

    references = {store.path(r[0]) for r in store.db.execute("SELECT path FROM masks WHERE kind = 'reference'")}
    assert len(references) == 16
    stage1 = read_train_set(layout, "stage1")
    assert stage1[accepted]["source"] == "reviewed" and Path(stage1[accepted]["mask"]) == reviewed_files[accepted]
    assert stage1[corrected]["source"] == "reviewed" and Path(stage1[corrected]["mask"]) == reviewed_files[corrected]
    assert rejected not in stage1
    assert {n for n, r in stage1.items() if r["source"] == "pseudo:teacher"} == reliable - {accepted, rejected}
    assert not references & {Path(r["mask"]) for r in stage1.values()}

    # Re-labelling after stage 1 leaves reviewed and rejected images alone.
    relabelled = {p.stem for p in layout.pseudo_dir("stage1").glob("*.png")}
    assert relabelled == set(ranked) - reliable - {corrected, rejected}
    assert {name: path.read_bytes() for name, path in reviewed_files.items()} == reviewed_bytes

    # A second review round: accept an image as stage 1 re-labelled it, then run to the end.
    late = sorted(relabelled)[0]
    record_decision(store, run.id, late, "accepted")
    assert latest_decisions(store, "synth")[late].stage == "stage1"
    run = continue_run(runner, run.id)
    run = runner.wait(run.id, RUN_TIMEOUT_S, **track)
    assert run.status == "done", run.error
    # Each continued phase goes on from where the last one paused, while it skips the finished stages.
    assert seen == sorted(seen) and seen[-1] == 1.0, seen
    stage2 = read_train_set(layout, "stage2")
    assert {n for n, r in stage2.items() if r["source"] == "reviewed"} == {accepted, corrected, late}
    np.testing.assert_array_equal(read_mask(stage2[late]["mask"]), read_mask(layout.pseudo_dir("stage1") / f"{late}.png"))
    assert rejected not in stage2
    assert not references & {Path(r["mask"]) for r in stage2.values()}
    assert get_run(store, run.id).stage == "stage2"
    with pytest.raises(ReviewError, match="already trained stage 1"):
        set_reliable_ratio(store, run.id, 0.75)

    samples = [synthetic_dataset / "images" / f"val_00{i}.png" for i in (0, 1)]
    samples.append(tmp_path / "again" / samples[0].name)  # a second upload of the same name
    samples[-1].parent.mkdir()
    samples[-1].write_bytes(samples[0].read_bytes())
    prediction = predict_images(store, run.id, samples, "stage2", device="cpu")
    assert [read_mask(m).shape for m in prediction.masks] == [(64, 64)] * 3
    with zipfile.ZipFile(prediction.archive) as zf:
        assert sorted(zf.namelist()) == ["manifest.json", "masks/val_000-2.png", "masks/val_000.png",
                                         "masks/val_001.png"]
        manifest = json.loads(zf.read("manifest.json"))
        np.testing.assert_array_equal(read_mask(io.BytesIO(zf.read("masks/val_001.png"))),
                                      read_mask(prediction.masks[1]))
    assert manifest["masks"] == {"masks/val_000.png": "val_000.png", "masks/val_001.png": "val_001.png",
                                 "masks/val_000-2.png": "val_000.png"}
    assert (manifest["project"], manifest["run_id"], manifest["stage"]) == ("synth", run.id, "stage2")
    cfg = StppConfig.from_dict(run.config)
    assert manifest["model_checkpoint"] == str(layout.model_path("stage2", cfg.pseudo.num_checkpoints).resolve())
    assert manifest["tta"] == cfg.pseudo.tta and manifest["config_hash"] == cfg.config_hash()
    with zipfile.ZipFile(export_model_zip(store, run.id, "stage2")) as zf:
        assert "model-stage2/model.torchscript.pt" in zf.namelist()

    report = quality_report(store, run.id)
    assert report.with_reference == 16
    rows = {(r.group, r.labels): r for r in report.rows}
    assert rows[("reliable", "teacher")].images == len(reliable)  # reviewed images keep their teacher masks
    assert rows[("unreliable", "teacher")].images == 16 - len(reliable)
    assert rows[("unreliable", "stage1")].images == len(relabelled)
    assert all(r.miou is None or 0 <= r.miou <= 100 for r in report.rows)
    # The ranking study's stability split is the run's own split at the run's R.
    study = run_ranking_study(store, run.id)
    assert (study.images, study.reliable) == (16, len(reliable))
    run_split = study.signals["stability"].split
    assert run_split.reliable.pooled_miou == rows[("reliable", "teacher")].miou
    assert run_split.unreliable.pooled_miou == rows[("unreliable", "teacher")].miou
    # The perfect split (by each image's own mIoU) bounds the gap of mean per-image mIoU; the pooled gap,
    # which weighs images by their pixels per class, it need not bound.
    image_gap = lambda split: split.reliable.mean_image_miou - split.unreliable.mean_image_miou  # noqa: E731
    assert image_gap(study.perfect) >= image_gap(run_split) and len(study.random) == 20

    export = export_project(store, "synth", layout.root.parent / "voc.zip", "voc", run_id=run.id)
    with zipfile.ZipFile(export.path) as zf:
        names = set(zf.namelist())
        corrected_png = np.array(Image.open(io.BytesIO(zf.read(f"{VOC_ROOT}/SegmentationClass/{corrected}.png"))))
    assert f"{VOC_ROOT}/JPEGImages/{rejected}.jpg" not in names
    np.testing.assert_array_equal(corrected_png, fixed)


def check_views(store, run_id: int, layout: RunLayout, ranked: list[str], decided: dict[str, str]) -> None:
    """Gallery order, filters and the disagreement map against the store and the run folder."""
    page = gallery_page(store, GalleryQuery(run_id, per_page=5))
    assert [item.name for item in page.items] == ranked[:5]
    assert (page.pages, page.total, page.ranked, page.reliable) == (4, 16, 16, 8)
    scores = {r[0]: r[1] for r in store.db.execute(
        "SELECT i.name, s.stability FROM scores s JOIN images i ON i.id = s.image_id WHERE s.run_id = ?", [run_id])}
    assert all(item.caption.startswith(f"#{item.rank} · {scores[item.name]:.3f} · ") for item in page.items)
    assert all(item.thumbnail.is_file() for item in page.items)
    last = gallery_page(store, GalleryQuery(run_id, page=9, per_page=5, most_stable_first=False))
    assert last.page == 3 and [item.name for item in last.items] == ranked[::-1][15:]
    reliable = gallery_page(store, GalleryQuery(run_id, show="reliable", ratio=0.3, per_page=50))
    assert [item.name for item in reliable.items] == ranked[:4] and all(item.reliable for item in reliable.items)
    for decision in ("accepted", "rejected", "corrected"):
        shown = gallery_page(store, GalleryQuery(run_id, show=decision))
        assert [(i.name, i.decision) for i in shown.items] == [(n, d) for n, d in decided.items() if d == decision]
    assert gallery_page(store, GalleryQuery(run_id, show="not reviewed")).total == 16 - len(decided)
    low = min(scores.values())
    assert {i.name for i in gallery_page(store, GalleryQuery(run_id, max_score=low)).items} == {
        n for n, v in scores.items() if v <= low}

    name = ranked[len(ranked) // 2]
    detail = image_detail(store, run_id, image_id(store, name))
    masks = [read_mask(layout.stability_dir(j) / f"{name}.png") for j in (1, 2, 3)]
    for shown, stored in zip(detail.checkpoint_masks, masks):
        np.testing.assert_array_equal(shown, stored)
    expected = (masks[0] != masks[2]).astype(np.uint8) + (masks[1] != masks[2])
    np.testing.assert_array_equal(detail.disagreement, expected)
    np.testing.assert_array_equal(detail.mask, read_mask(layout.pseudo_dir("teacher") / f"{name}.png"))
    assert detail.mask_source == "pseudo:teacher" and detail.rank == ranked.index(name) + 1


def test_disagreement_map_counts_the_earlier_checkpoints_that_differ():
    final = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    first = np.array([[0, 0], [2, 0]], dtype=np.uint8)
    second = np.array([[1, 1], [2, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(disagreement_map([first, second, final]), [[1, 1], [0, 2]])
    with pytest.raises(ValueError):
        disagreement_map([final])


@pytest.mark.parametrize("num_checkpoints", [2, 3, 5])
def test_the_disagreement_picture_is_yellow_for_one_checkpoint_and_red_for_all(num_checkpoints):
    """What the Review tab's legend says: yellow where one earlier checkpoint differs, red where all do."""
    image = np.full((1, 3, 3), 200, dtype=np.uint8)
    counts = np.array([[0, 1, num_checkpoints - 1]])
    picture = disagreement_image(image, counts, num_checkpoints)
    assert picture[0, 0].tolist() == [100, 100, 100]
    assert picture[0, 2].tolist() == [255, 0, 0]
    if num_checkpoints > 2:
        assert picture[0, 1].tolist() == [255, 230, 0]


def test_painted_layer_snaps_to_the_palette_and_changes_only_painted_pixels():
    palette = [(0, 0, 0), (220, 30, 30), (30, 200, 30), (40, 60, 230)]
    mask = np.zeros((6, 8), dtype=np.uint8)
    layer = np.zeros((12, 16, 4), dtype=np.uint8)  # an editor canvas at twice the mask's size
    layer[0:4, 0:6] = (200, 50, 40, 255)           # near red
    layer[8:12, 10:16] = (35, 190, 35, 140)        # near green, mostly opaque
    layer[8:12, 0:4] = (40, 60, 230, 60)           # faint anti-aliased edge: ignored
    merged = merge_painted_layer(mask, layer, palette)
    expected = mask.copy()
    expected[0:2, 0:3] = 1
    expected[4:6, 5:8] = 2
    np.testing.assert_array_equal(merged, expected)
    assert mask.max() == 0  # the input is left alone


def square_outline(layer: np.ndarray, top: int, left: int, bottom: int, right: int, colour, width: int = 2) -> None:
    """Paint the outline of a box into an RGBA layer, as a person's closed stroke."""
    for rows, cols in [(slice(top, top + width), slice(left, right)), (slice(bottom - width, bottom), slice(left, right)),
                       (slice(top, bottom), slice(left, left + width)), (slice(top, bottom), slice(right - width, right))]:
        layer[rows, cols] = (*colour, 255)


def test_fill_paints_what_an_outline_encloses_even_across_a_small_gap_and_along_the_edge():
    palette = [(0, 0, 0), (220, 30, 30), (30, 200, 30)]
    mask = np.zeros((60, 80), dtype=np.uint8)
    layer = np.zeros((120, 160, 4), dtype=np.uint8)  # the editor canvas, twice the mask's size
    square_outline(layer, 20, 20, 82, 100, palette[1])
    layer[50, 20:22] = 0                             # the hand did not quite close the outline
    square_outline(layer, 0, 110, 120, 160, palette[2])  # a region drawn along the canvas's edges
    filled = merge_painted_layer(mask, layer, palette, fill=True)
    expected = mask.copy()
    expected[10:41, 10:50] = 1
    expected[:, 55:80] = 2
    np.testing.assert_array_equal(filled, expected)
    # Without fill the same strokes change only the outlines.
    stroked = merge_painted_layer(mask, layer, palette)
    assert (stroked == 1).sum() < 0.2 * (expected == 1).sum()


def test_an_open_stroke_fills_nothing_beyond_itself():
    palette = [(0, 0, 0), (220, 30, 30)]
    layer = np.zeros((40, 40, 4), dtype=np.uint8)
    layer[5:35, 5:7] = (220, 30, 30, 255)            # three sides of a box: nothing enclosed
    layer[5:7, 5:35] = (220, 30, 30, 255)
    layer[33:35, 5:35] = (220, 30, 30, 255)
    mask = np.zeros((40, 40), dtype=np.uint8)
    np.testing.assert_array_equal(merge_painted_layer(mask, layer, palette, fill=True),
                                  merge_painted_layer(mask, layer, palette))


def test_only_class_replaces_one_class_inside_the_region_and_keeps_the_rest():
    palette = [(0, 0, 0), (220, 30, 30), (30, 200, 30)]
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, 20:] = 2
    layer = np.zeros((40, 40, 4), dtype=np.uint8)
    square_outline(layer, 5, 5, 35, 35, palette[1])
    replaced = merge_painted_layer(mask, layer, palette, fill=True, only_class=2)
    expected = mask.copy()
    expected[5:35, 20:35] = 1
    np.testing.assert_array_equal(replaced, expected)
    # The brush obeys it too: a stroke over both classes changes only class 2's pixels.
    stroke = np.zeros((40, 40, 4), dtype=np.uint8)
    stroke[0:2, :] = (220, 30, 30, 255)
    brushed = merge_painted_layer(mask, stroke, palette, only_class=2)
    assert (brushed[0:2, :20] == 0).all() and (brushed[0:2, 20:] == 1).all()


def test_overlay_blends_only_shown_classes():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    palette = [(0, 0, 0), (200, 0, 0)]
    out = overlay(image, mask, palette, opacity=0.5, classes=[1])
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 1], [150, 50, 50])
    np.testing.assert_array_equal(out[1, 0], [100, 100, 100])
    np.testing.assert_array_equal(colorize(mask, palette)[1, 0], [255, 255, 255])


def test_only_a_paused_run_continues_and_plans_fit_the_method(store):
    runner = JobRunner(store)
    run = create_run(store, "synth", StppConfig.from_dict({"method": "st++", "preset": "test"}))
    with pytest.raises(ReviewError, match="not awaiting review"):
        continue_run(runner, run.id)
    with pytest.raises(StoreError, match="no run 99"):
        continue_run(runner, 99)
    assert run.review_plan == () and next_pause(store, run.id) is None
    with pytest.raises(RunStateError, match="cannot pause after stage2"):
        set_review_plan(store, run.id, ["ranking", "stage2"])
    assert set_review_plan(store, run.id, ["stage1", "ranking"]) == ("ranking", "stage1")
    assert get_run(store, run.id).review_plan == ("ranking", "stage1")
    assert next_pause(store, run.id) == "ranking"
    with pytest.raises(ReviewError, match="queued"):
        set_reliable_ratio(store, run.id, 0.3)


def test_cli_until_pauses_a_headless_run_and_resume_finishes_it(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "run"
    fast = [f"--set={key}={value}" for key, value in FAST.items()]
    paused = run_stpp(*run_args(synthetic_dataset, out), *fast, "--device", "cpu", "--until", "ranking")
    assert json.loads(paused.stdout.strip().splitlines()[-1])["paused_after"] == "ranking"
    layout = RunLayout(out)
    assert layout.scores_path.is_file() and len(list(layout.pseudo_dir("teacher").glob("*.png"))) == 16
    assert not (layout.checkpoints_dir / "stage1.pt").exists()
    done = run_stpp(*run_args(synthetic_dataset, out), *fast, "--device", "cpu", "--resume")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "paused_after" not in result and set(result["metrics"]) == {"teacher", "stage1", "stage2"}
    wrong = run_stpp(*run_args(synthetic_dataset, tmp_path / "sup", "supervised"), "--until", "ranking",
                     check=False)
    assert wrong.returncode == 2 and "cannot pause after 'ranking'" in wrong.stderr
