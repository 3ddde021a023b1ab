"""The quality benchmark's command and outputs keep working (on a 2-image-per-split CamVid slice)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAMVID_DIR
from helpers import REPO


@pytest.fixture
def camvid_slice(tmp_path: Path) -> Path:
    if not CAMVID_DIR.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID_DIR}")
    root = tmp_path / "camvid"
    ids = {
        "labeled": (CAMVID_DIR / "splits" / "1_8" / "labeled.txt").read_text().split()[:2],
        "unlabeled": (CAMVID_DIR / "splits" / "1_8" / "unlabeled.txt").read_text().split()[:2],
        "val": (CAMVID_DIR / "splits" / "val.txt").read_text().split()[:2],
    }
    for sub in ("images", "masks"):
        for folder in ("train", "val"):
            (root / sub / folder).mkdir(parents=True)
    for split, names in ids.items():
        folder = "val" if split == "val" else "train"
        for image_id in names:
            shutil.copy(CAMVID_DIR / "images" / folder / f"{image_id}.jpg", root / "images" / folder)
            shutil.copy(CAMVID_DIR / "masks" / folder / f"{image_id}.png", root / "masks" / folder)
    shutil.copy(CAMVID_DIR / "classes.json", root)
    (root / "splits" / "1_8").mkdir(parents=True)
    (root / "splits" / "1_8" / "labeled.txt").write_text("\n".join(ids["labeled"]) + "\n")
    (root / "splits" / "1_8" / "unlabeled.txt").write_text("\n".join(ids["unlabeled"]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(ids["val"]) + "\n")
    return root


@pytest.mark.slow
def test_quality_bench_writes_its_results_table(camvid_slice: Path, tmp_path: Path):
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "stpp.bench", "quality", "--data", str(camvid_slice), "--split", "1_8",
               "--preset", "test", "--set", "optim.epochs=3", "--set", "optim.student_epochs=1",
               "--set", "optim.batch_size=2", "--out", str(tmp_path / "runs"), "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(results.read_text())
    assert report["dataset"] == "camvid" and report["split"] == "1_8" and report["preset"] == "test"
    assert set(report["methods"]) == {"supervised", "st", "st++"}
    for row in report["methods"].values():
        assert set(row) >= {"miou", "per_class", "seconds"} and len(row["per_class"]) == 11
    assert set(report["pseudo_quality"]) >= {"reliable_miou", "unreliable_miou", "boosted_miou", "spearman"}
    study = report["pseudo_quality"]["ranking_study"]
    assert [row["ranking"] for row in study["rows"]] == ["stability", "pixel_agreement", "perfect", "random (20 draws)"]
    assert study["rows"][0]["reliable_pooled_miou"] == report["pseudo_quality"]["reliable_miou"]
    assert len(study["per_class_iou"]["stability reliable"]) == 11
    assert "| perfect |" in results.with_suffix(".md").read_text()
    assert "| st++ |" in results.with_suffix(".md").read_text()
    # ST and ST++ started from the SupOnly run's teacher instead of training it again
    (st_run,) = (tmp_path / "runs" / "camvid-1_8-test").glob("st-s0-*")  # named by its config hash
    st_events = (st_run / "events.jsonl").read_text()
    assert '"stage_skipped"' in st_events and '"teacher"' in st_events


def test_ablations_are_chosen_by_name(capsys: pytest.CaptureFixture):
    from stpp.bench.quality import ABLATIONS, ablation_variants, main

    assert ablation_variants(None) == []
    assert ablation_variants("all") == list(ABLATIONS.values())
    assert [v.overrides for v in ablation_variants("sda-off,r25")] == [("augment.strong_unlabeled=false",),
                                                                     ("selftrain.reliable_ratio=0.25",)]
    with pytest.raises(SystemExit) as exited:  # refused before any data is read
        main(["--data", "/nonexistent", "--split", "1_8", "--ablations", "sda-off,nope"])
    assert exited.value.code == 2 and "unknown ablation nope; choose from: all, sda-off" in capsys.readouterr().err


def test_gains_are_paired_by_seed_and_summarised_over_seeds():
    from stpp.bench.quality import RunResult, Variant, paired_gain

    def result(method: str, seed: int, miou: float | None) -> RunResult:
        return RunResult(Variant(method, method), seed, Path(f"{method}-{seed}"), miou, {}, 1.0)

    supervised = [result("supervised", 0, 40.0), result("supervised", 1, 42.0), result("supervised", 2, 41.0)]
    stpp = [result("st++", 0, 45.0), result("st++", 1, 44.0), result("st++", 3, 50.0)]  # seed 3 has no pair
    gain = paired_gain(stpp, supervised)
    assert gain == {"per_seed": {"0": 5.0, "1": 2.0}, "mean": 3.5, "std": 1.5}
    assert paired_gain(supervised, supervised) is None
    assert paired_gain([result("st", 0, None)], supervised) is None


def test_ceilings_train_on_the_ground_truth_of_the_unlabelled_images(camvid_slice: Path, tmp_path: Path):
    """SupOnly on every train label and ST with a perfect teacher: named rows, trained on what they say."""
    from stpp.bench.quality import main

    results = tmp_path / "results.json"
    assert main(["--data", str(camvid_slice), "--split", "1_8", "--preset", "test", "--methods", "supervised",
                 "--ceilings", "--set", "optim.epochs=3", "--set", "optim.student_epochs=1",
                 "--set", "optim.batch_size=2", "--out", str(tmp_path / "runs"), "--results", str(results)]) == 0
    methods = json.loads(results.read_text())["methods"]
    assert list(methods) == ["supervised", "supervised (all labels)", "st (ground-truth pseudo masks)"]
    assert all(row["miou"] is not None and row["paired_gain"] is not None for name, row in methods.items()
               if name != "supervised")
    split = camvid_slice / "splits" / "1_8"
    labeled, unlabeled = (split / "labeled.txt").read_text().split(), (split / "unlabeled.txt").read_text().split()

    (all_labels,) = map(Path, methods["supervised (all labels)"]["runs"])
    inputs = json.loads((all_labels / "inputs.json").read_text())
    assert (inputs["labeled"], inputs["unlabeled"]) == (labeled + unlabeled, [])

    (perfect,) = map(Path, methods["st (ground-truth pseudo masks)"]["runs"])
    with (perfect / "stages" / "st" / "train_set.csv").open() as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert {i for i, row in rows.items() if row["source"] != "ground_truth"} == set(unlabeled)
    for image_id in unlabeled:
        assert Path(rows[image_id]["mask"]).read_bytes() == (camvid_slice / "masks" / "train" /
                                                              f"{image_id}.png").read_bytes()
    skipped = [json.loads(line) for line in (perfect / "events.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in skipped if e["kind"] == "stage_skipped"} == {"teacher"}  # SupOnly's, reused


def test_seeds_add_up_across_invocations_and_machines(camvid_slice: Path, tmp_path: Path):
    """A seed trained earlier (its run folder gone, as on another machine) stays in the results file
    while its config is what the benchmark would train now; a row of other settings is dropped."""
    from stpp.bench.quality import main

    results = tmp_path / "results.json"

    def bench(seed: int, *extra: str) -> dict:
        runs = tmp_path / f"runs-{seed}-{len(extra)}"
        assert main(["--data", str(camvid_slice), "--split", "1_8", "--preset", "test", "--methods", "supervised",
                     "--seeds", str(seed), "--set", "optim.epochs=3", "--set", "optim.batch_size=2", *extra,
                     "--out", str(runs), "--results", str(results)]) == 0
        shutil.rmtree(runs)  # a fresh machine has none of the earlier run folders
        return json.loads(results.read_text())["methods"]["supervised"]

    first = bench(0)
    second = bench(1)
    assert second["seeds"] == [0, 1] and second["per_seed"][0] == first["per_seed"][0]
    assert second["miou"] == round((first["miou"] + second["per_seed"][1]["miou"]) / 2, 2)
    assert {row["device"] for row in second["per_seed"]} == {first["per_seed"][0]["device"]}
    assert "| supervised | " in (tmp_path / "results.md").read_text()
    assert "| 0,1 |" in (tmp_path / "results.md").read_text()
    other = bench(2, "--set", "augment.crop_size=40")  # another config: the rows of seeds 0 and 1 no longer hold
    assert other["seeds"] == [2]
