"""The simulated reviewer benchmark (``python -m stpp.bench review``) on a real paused run of the
``test`` preset: its decisions are the Review tab's review rows, and the dataset quality it measures
moves the way the decisions say."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stpp.bench.review import (
    SIMULATED_USER,
    Rule,
    check_ranked,
    main,
    review_order,
    simulate_review,
)
from stpp.bench.review_students import StudentVariant, train_students
from stpp.cli.project_runs import compute_with_progress_bar
from stpp.core.events import read_events
from stpp.core.layout import RunLayout
from stpp.core.masks import read_image, read_mask
from stpp.core.metrics import confusion_matrix, mask_miou, mean_iou
from stpp.core.teacher_signals import read_teacher_signals
from stpp.data.transforms import to_eval_tensor
from stpp.engine.checkpoint import load_model
from stpp.engine.inference import Predictor
from stpp.jobs import JobRunner
from stpp.selftrain.probability_signals import image_signals, teacher_signals
from stpp.selftrain.ranking_study import SIGNALS
from stpp.services.quality import dataset_quality, run_ranking_study
from stpp.services.review import latest_decisions, reviewed_inputs
from stpp.services.run_copy import import_run_copy
from stpp.store import StoreError, create_project, import_folder_dataset, open_store
from stpp.store.images import image_paths_by_name
from stpp.store.projects import get_project
from stpp.store.ranking import ranks_by_name
from stpp.store.trial import rolled_back
from ui.services import Services, Settings
from ui.tabs.phases import study_frames
from ui.tabs.review import status_text

FAST = {"optim.epochs": 3, "optim.student_epochs": 1, "pseudo.tta": False}
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path):
    """A store with the generated dataset (unlabelled masks imported as references) and an ST++ run
    paused after its ranking, launched with review as the Train tab launches it."""
    workspace = tmp_path_factory.mktemp("bench-review") / "workspace"
    with open_store(workspace) as store:
        project = create_project(store, "synth", synthetic_dataset / "classes.json")
        assert not import_folder_dataset(store, project, synthetic_dataset).failed
        runner = JobRunner(store, start_grace_s=300)
        run = runner.launch("synth", "st++", "test", FAST, "cpu", review=True)
        run = runner.wait(run.id, 420, statuses=("awaiting_review", "done", "failed", "cancelled"))
        assert run.status == "awaiting_review", run.error
        yield store, run


def truth(dataset: Path, name: str) -> np.ndarray:
    """The generated ground truth, read from the dataset folder (not from the store)."""
    return read_mask(dataset / "masks" / f"{name}.png")


def test_the_simulated_reviewer_records_review_tab_decisions(paused, synthetic_dataset: Path):
    store, run = paused
    layout = RunLayout(store.path(run.run_dir))
    order = review_order(store, run.id, "least-stable")
    ranks = ranks_by_name(store, run.id)
    assert [ranks[name] for name in order] == sorted(ranks.values(), reverse=True)
    assert review_order(store, run.id, "most-stable") == order[::-1]
    assert review_order(store, run.id, "random", seed=3) == review_order(store, run.id, "random", seed=3)
    assert sorted(review_order(store, run.id, "random", seed=3)) == sorted(order)

    reviewed = order[:8]
    teacher = {name: read_mask(layout.pseudo_dir("teacher") / f"{name}.png") for name in reviewed}
    scores = {name: mask_miou(truth(synthetic_dataset, name), teacher[name], NUM_CLASSES) for name in reviewed}
    threshold = float(np.median(list(scores.values())))
    expected, corrected = {}, 0
    for name in reviewed:
        if scores[name] >= threshold:
            expected[name] = "accepted"
        elif corrected < 2:
            expected[name], corrected = "corrected", corrected + 1
        else:
            expected[name] = "rejected"
    assert {"accepted", "rejected", "corrected"} <= set(expected.values())

    with rolled_back(store):
        decisions = list(simulate_review(store, run.id, reviewed, Rule(threshold, corrections=2)))
        assert [d.image for d in decisions] == reviewed
        latest = latest_decisions(store, "synth")
        assert {name: d.decision for name, d in latest.items()} == expected
        assert {(d.user, d.run_id) for d in latest.values()} == {(SIMULATED_USER, run.id)}
        for name, decision in expected.items():
            if decision == "accepted":
                np.testing.assert_array_equal(read_mask(store.path(latest[name].mask_path)), teacher[name])
                assert latest[name].stage == "teacher"
            elif decision == "corrected":
                np.testing.assert_array_equal(read_mask(store.path(latest[name].mask_path)),
                                              truth(synthetic_dataset, name))
            else:
                assert latest[name].mask_path is None
        # What the worker hands the next stage: the same as after decisions in the Review tab.
        kept, rejected = reviewed_inputs(store, "synth")
        assert {name for name, _, _ in kept} == {n for n, d in expected.items() if d != "rejected"}
        assert rejected == {n for n, d in expected.items() if d == "rejected"}
    assert latest_decisions(store, "synth") == {}


def test_dataset_quality_follows_the_decisions(paused, synthetic_dataset: Path):
    store, run = paused
    layout = RunLayout(store.path(run.run_dir))
    names = review_order(store, run.id, "random", seed=1)
    matrix = sum(confusion_matrix(truth(synthetic_dataset, name),
                                  read_mask(layout.pseudo_dir("teacher") / f"{name}.png"), NUM_CLASSES)
                 for name in names)
    automatic = dataset_quality(store, run.id)
    assert (automatic.images, automatic.kept, automatic.sources) == (16, 16, {"pseudo": 16})
    assert automatic.miou == round(100 * mean_iou(matrix), 2)
    assert automatic.miou < 100

    def reviewed(rule: Rule, count: int = len(names)):
        with rolled_back(store):
            decisions = list(simulate_review(store, run.id, names[:count], rule))
            return decisions, dataset_quality(store, run.id)

    decisions, quality = reviewed(Rule(threshold=1.01))
    assert {d.decision for d in decisions} == {"rejected"}
    assert (quality.kept, quality.sources, quality.miou) == (0, {}, None)

    decisions, quality = reviewed(Rule(threshold=0.0))
    assert {d.decision for d in decisions} == {"accepted"}
    assert (quality.kept, quality.sources, quality.miou) == (16, {"accepted": 16}, automatic.miou)

    decisions, quality = reviewed(Rule(threshold=1.01, corrections=len(names)))
    assert {d.decision for d in decisions} == {"corrected"}
    assert (quality.kept, quality.sources, quality.miou) == (16, {"corrected": 16}, 100.0)
    assert set(quality.iou) <= {100.0, None}

    decisions, quality = reviewed(Rule(threshold=1.01, corrections=4), count=6)
    assert [d.decision for d in decisions] == ["corrected"] * 4 + ["rejected"] * 2
    assert (quality.kept, quality.sources) == (14, {"corrected": 4, "pseudo": 10})
    assert latest_decisions(store, "synth") == {}


def test_the_lowest_confidence_order_follows_the_final_teachers_probabilities(paused):
    store, run = paused
    layout = RunLayout(store.path(run.run_dir))
    layout.teacher_signals_path.unlink(missing_ok=True)
    with pytest.raises(StoreError, match="no teacher confidence"):
        review_order(store, run.id, "lowest-confidence")
    assert list(run_ranking_study(store, run.id).signals) == ["stability", "pixel_agreement"]
    compute_with_progress_bar(store, run.id, "cpu")
    # The store's ranking study (the Phases tab's) now studies them too.
    assert list(run_ranking_study(store, run.id).signals) == list(SIGNALS)
    table, _, note = study_frames(Services(store=store, settings=Settings(workspace=store.workspace)), run.id)
    assert list(table.iloc[:, 0])[:4] == list(SIGNALS) and "*tta_agreement*" in note
    signals = read_teacher_signals(layout)
    order = review_order(store, run.id, "lowest-confidence")
    assert sorted(order) == sorted(ranks_by_name(store, run.id)) == sorted(signals)
    confidences = [signals[name]["confidence"] for name in order]
    assert confidences == sorted(confidences) and len(set(confidences)) > 1

    # The file holds what one image's pass gives, and a second call computes nothing.
    files = image_paths_by_name(store, get_project(store, run.project_id))
    paths = {name: store.path(files[name]) for name in order}
    predictor = Predictor(load_model(layout.teacher_checkpoint(3)))
    image = to_eval_tensor(read_image(paths[order[0]])).unsqueeze(0)
    expected = image_signals(predictor, image, run.cfg)
    assert signals[order[0]] == {name: pytest.approx(value, abs=1e-6) for name, value in expected.items()}
    computed = []
    assert teacher_signals(layout, run.cfg, paths, torch.device("cpu"), on_image=lambda *a: computed.append(a)) \
        == signals
    assert computed == []


def test_the_benchmark_command_writes_the_grid_and_the_plot(paused, tmp_path: Path, capsys):
    store, run = paused
    results = tmp_path / "review.json"
    assert main(["--workspace", str(store.workspace), "--run", str(run.id), "--budgets", "3,6,40",
                 "--corrections", "0,2", "--seed", "5", "--random-draws", "3", "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    assert report["run"]["id"] == run.id and report["automatic"]["kept"] == 16
    rows = {(row["order"], row["seed"], row["corrections"], row["budget"]): row for row in report["grid"]}
    orders = [("least-stable", None), ("most-stable", None), ("lowest-confidence", None),
              ("random", 5), ("random", 6), ("random", 7)]
    assert set(rows) == {(order, seed, m, budget) for order, seed in orders for m in (0, 2) for budget in (3, 6, 16)}
    for (order, seed, m, budget), row in rows.items():
        assert row["accepted"] + row["rejected"] + row["corrected"] == budget
        assert row["corrected"] <= m and row["kept"] == 16 - row["rejected"]
    assert rows[("least-stable", None, 0, 16)]["kept"] == rows[("random", 5, 0, 16)]["kept"]
    # The table gives the random draws' mean and spread.
    random_at_6 = [rows[("random", seed, 0, 6)]["miou"] for seed in (5, 6, 7)]
    out = capsys.readouterr().out
    assert "| least-stable | 2 |" in out and "| random (3 draws: mean ± std) | 0 |" in out
    assert f"| {np.mean(random_at_6):.2f} ± {np.std(random_at_6):.2f} (" in out
    assert results.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert latest_decisions(store, "synth") == {}


def test_the_review_tab_shows_progress_against_the_budget_and_the_live_dataset_miou(paused):
    store, run = paused
    services = Services(store=store, settings=Settings(workspace=store.workspace))

    def status(budget=None) -> str:
        return " ".join(status_text(services, run.id, budget).split())

    automatic = dataset_quality(store, run.id)
    assert "Reviewed **0 / 16**, 16 left" in status()
    assert f"Dataset mIoU against the reference masks: **{automatic.miou:.1f}** over the 16 of 16 images" in status()
    with rolled_back(store):
        names = review_order(store, run.id, "least-stable")[:6]
        list(simulate_review(store, run.id, names, Rule(threshold=1.01, corrections=4)))
        reviewed = dataset_quality(store, run.id)
        assert reviewed.miou > automatic.miou  # four references in place of pseudo masks, two images left out
        shown = status(budget=10)
        assert "Reviewed **6 / 10** (budget), 4 left · accepted 0 · rejected 2 · corrected 4" in shown
        assert f"**{reviewed.miou:.1f}** over the 14 of 16 images the export keeps" in shown


def test_students_train_on_what_the_simulated_review_decided(paused, synthetic_dataset: Path, tmp_path: Path):
    """Model quality: each variant forks the ranked run, and its students train on the reviewed set
    the worker composes from the decisions (accepted and corrected as labels, rejected left out)."""
    store, run = paused
    results = tmp_path / "review.json"
    argv = ["--workspace", str(store.workspace), "--run", str(run.id), "--budgets", "6", "--corrections", "2",
            "--students", "least-stable,random", "--student-budget", "6", "--student-corrections", "2",
            "--threshold", "0.5", "--results", str(results)]
    assert main(argv) == 0
    quality = json.loads(results.read_text())["model_quality"]
    rows = {row["variant"]: row for row in quality["variants"]}
    assert list(rows) == ["automatic", "least-stable-6-m2", "random-6-m2"]
    assert latest_decisions(store, "synth") == {}
    source = RunLayout(store.path(run.run_dir))
    assert not source.model_path("stage1", 3).exists()  # the paused run itself trained nothing
    order = review_order(store, run.id, "least-stable")

    for name, row in rows.items():
        fork = RunLayout(row["folder"])
        decisions = json.loads((fork.root / "review.json").read_text())["decisions"]
        if name == "automatic":
            assert decisions == {} and (row["accepted"], row["rejected"], row["corrected"]) == (0, 0, 0)
        else:
            assert row["accepted"] + row["rejected"] + row["corrected"] == 6 and row["corrected"] <= 2
        if name.startswith("least-stable"):
            assert list(decisions) == order[:6]
        for stage in ("stage1", "stage2"):
            assert fork.model_path(stage, 3).exists() and row["stages"][stage] is not None
            with fork.train_set_path(stage).open() as handle:
                sources = {line["id"]: line for line in csv.DictReader(handle)}
            reviewed = {i for i, line in sources.items() if line["source"] == "reviewed"}
            assert reviewed == {n for n, d in decisions.items() if d != "rejected"}
            assert not {n for n, d in decisions.items() if d == "rejected"} & set(sources)
            for image, decision in decisions.items():
                if decision == "corrected":
                    np.testing.assert_array_equal(read_mask(sources[image]["mask"]), truth(synthetic_dataset, image))
                elif decision == "accepted":
                    np.testing.assert_array_equal(read_mask(sources[image]["mask"]),
                                                  read_mask(source.pseudo_dir("teacher") / f"{image}.png"))
        assert row["last_stage"] == "stage2" and row["miou"] == row["stages"]["stage2"]
    assert rows["least-stable-6-m2"]["corrected"] == 2  # the least stable images include rejected ones

    # Run again: every fork is reused as it was trained, nothing trains again.
    starts = {n: read_events(RunLayout(r["folder"]).events_path) for n, r in rows.items()}
    assert main(argv) == 0
    again = {row["variant"]: row for row in json.loads(results.read_text())["model_quality"]["variants"]}
    assert {n: r["stages"] for n, r in again.items()} == {n: r["stages"] for n, r in rows.items()}
    for name, row in again.items():
        events = read_events(RunLayout(row["folder"]).events_path)
        assert not [e for e in events[len(starts[name]):] if e["kind"] == "stage_start"]

    saved = Path(rows["random-6-m2"]["folder"]) / "review.json"
    saved.write_text(json.dumps({"decisions": {}}))
    with pytest.raises(StoreError, match="other decisions"):
        train_students(store, run.id, [StudentVariant("random", 6, 2)], threshold=0.5)


def test_an_imported_headless_ranking_is_a_run_the_benchmark_takes(paused, tmp_path: Path):
    """A run ranked elsewhere (``python -m stpp run --until ranking``) arrives as an ended copy: the
    benchmark measures it; a run that trained a student is refused."""
    store, run = paused
    copy = import_run_copy(store, "synth", store.path(run.run_dir)).run
    assert copy.status != "awaiting_review"
    check_ranked(store, copy.id)
    with rolled_back(store):
        assert dataset_quality(store, copy.id).kept == 16
    trained = tmp_path / "trained"
    shutil.copytree(store.path(run.run_dir), trained)
    (trained / "stages" / "stage1").mkdir()
    refused = import_run_copy(store, "synth", trained).run
    with pytest.raises(StoreError, match="paused after the ranking"):
        check_ranked(store, refused.id)
