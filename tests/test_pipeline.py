"""The headless ST++ run end to end: every artefact of the contract, cross-checked against the method."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_args, run_stpp

from stpp.core.config import StppConfig, get_preset
from stpp.core.events import Activity, ListSink, read_events
from stpp.core.masks import read_mask
from stpp.core.method import stage_epochs
from stpp.data.datasets import EvalDataset, FolderDataset, read_split
from stpp.engine.checkpoint import load_model
from stpp.engine.inference import Predictor, tta_predict
from stpp.engine.train import evaluate
from stpp.models import build_model
from stpp.selftrain.pipeline import initial_model
from stpp.selftrain.pseudo import label_images, size_batches
from stpp.selftrain.stability import rank_images


@pytest.fixture(scope="module")
def stpp_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "stpp"
    run_stpp(*run_args(synthetic_dataset, out, "st++", "test"))
    return out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_writes_every_artefact_of_the_contract(stpp_run: Path, synthetic_dataset: Path):
    unlabeled = read_split(synthetic_dataset / "unlabeled.txt")
    config = json.loads((stpp_run / "config.json").read_text())
    assert config["method"] == "st++" and config["preset"] == "test"
    assert config["data"]["num_classes"] == 4
    for j in (1, 2, 3):
        checkpoint = torch.load(stpp_run / "checkpoints" / f"teacher_ckpt{j}.pt", weights_only=True)
        assert StppConfig.from_dict(checkpoint["config"]) == StppConfig.from_dict(config)
        assert {p.stem for p in (stpp_run / "stability" / f"ckpt{j}").glob("*.png")} == set(unlabeled)
    assert [c["epoch"] for c in (torch.load(stpp_run / "checkpoints" / f"teacher_ckpt{j}.pt", weights_only=True)
                                 for j in (1, 2, 3))] == [4, 8, 12]
    assert (stpp_run / "checkpoints" / "stage1.pt").exists() and (stpp_run / "checkpoints" / "stage2.pt").exists()
    assert not (stpp_run / "checkpoints" / "last.pt").exists()
    assert {p.stem for p in (stpp_run / "pseudo" / "teacher").glob("*.png")} == set(unlabeled)

    scores = _csv(stpp_run / "scores.csv")
    assert sorted(r["id"] for r in scores) == sorted(unlabeled)
    assert sum(r["reliable"] == "1" for r in scores) == math.floor(len(unlabeled) * 0.5)
    assert [int(r["rank"]) for r in scores] == list(range(1, len(unlabeled) + 1))

    metrics = json.loads((stpp_run / "metrics.json").read_text())
    assert metrics["validation"] is True
    assert set(metrics["stages"]) == {"teacher", "stage1", "stage2"}
    for stage in metrics["stages"].values():
        assert 0 <= stage["miou"] <= 100 and set(stage["per_class"]) == {"background", "red", "green", "blue"}
    kinds = [e["kind"] for e in read_events(stpp_run / "events.jsonl")]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"


def test_scores_recomputed_from_the_saved_stability_masks_match(stpp_run: Path):
    rows = _csv(stpp_run / "scores.csv")
    ids = [r["id"] for r in rows]
    recomputed = rank_images(
        ids, lambda i: [read_mask(stpp_run / "stability" / f"ckpt{j}" / f"{i}.png") for j in (1, 2, 3)],
        num_classes=4, reliable_ratio=0.5)
    assert [s.image_id for s in recomputed] == ids
    for score, row in zip(recomputed, rows):
        assert score.stability == pytest.approx(float(row["stability"]), abs=1e-6)
        assert score.reliable == (row["reliable"] == "1")


def test_training_sets_follow_the_method(stpp_run: Path, synthetic_dataset: Path):
    labeled = set(read_split(synthetic_dataset / "labeled.txt"))
    scores = _csv(stpp_run / "scores.csv")
    reliable = {r["id"] for r in scores if r["reliable"] == "1"}
    unreliable = {r["id"] for r in scores if r["reliable"] == "0"}

    teacher = _csv(stpp_run / "stages" / "teacher" / "train_set.csv")
    assert {r["id"] for r in teacher} == labeled and {r["source"] for r in teacher} == {"ground_truth"}
    # 8 labelled images, under optim.teacher_double_below = 200: the teacher sees its list twice
    assert {r["copies"] for r in teacher} == {"2"}

    stage1 = {r["id"]: r for r in _csv(stpp_run / "stages" / "stage1" / "train_set.csv")}
    assert set(stage1) == labeled | reliable
    assert all(stage1[i]["source"] == "pseudo:teacher" for i in reliable)
    assert all(stage1[i]["source"] == "ground_truth" and stage1[i]["copies"] == "1" for i in labeled)

    stage2 = {r["id"]: r for r in _csv(stpp_run / "stages" / "stage2" / "train_set.csv")}
    assert set(stage2) == labeled | reliable | unreliable
    assert all(stage2[i]["source"] == "pseudo:teacher" for i in reliable)
    assert all(stage2[i]["source"] == "pseudo:stage1" for i in unreliable)
    # labelled images are repeated ceil(|pseudo| / |labelled|) times: ceil(16 / 8) = 2
    assert all(stage2[i]["copies"] == "2" for i in labeled)
    # ground truth of unlabelled images is never a training mask
    masks_dir = str(synthetic_dataset / "masks")
    assert not any(r["mask"].startswith(masks_dir) for r in stage2.values() if r["id"] not in labeled)


def test_each_stage_starts_from_fresh_weights_for_the_epochs_of_its_config(stpp_run: Path):
    cfg = StppConfig.from_dict(json.loads((stpp_run / "config.json").read_text()))
    events = read_events(stpp_run / "events.jsonl")
    starts = {e["stage"]: e["data"] for e in events if e["kind"] == "stage_start"}
    ends = {e["stage"]: e["data"]["final_fingerprint"] for e in events if e["kind"] == "stage_end"}
    assert set(starts) == {"teacher", "stage1", "stage2"}
    assert {stage: data["epochs"] for stage, data in starts.items()} == {stage: stage_epochs(cfg, stage)
                                                                          for stage in starts}
    assert (starts["teacher"]["epochs"], starts["stage1"]["epochs"]) == (cfg.optim.epochs, cfg.optim.student_epochs)
    assert starts["teacher"]["items"] == 2 * 8
    fingerprints = {data["init_fingerprint"] for data in starts.values()}
    assert len(fingerprints) == 3 and ends["teacher"] not in fingerprints


def _head_and_backbone(cfg: StppConfig, stage: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = initial_model(cfg, stage, 4)
    return [p.detach() for p in model.head_parameters()], [p.detach() for p in model.backbone_parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_every_stage_draws_its_own_head_the_same_on_every_rerun():
    cfg = get_preset("test")
    teacher, stage1, stage2 = (_head_and_backbone(cfg, s) for s in ("teacher", "stage1", "stage2"))
    assert not _same(teacher[0], stage1[0]) and not _same(stage1[0], stage2[0]) and not _same(teacher[0], stage2[0])
    assert _same(teacher[1], stage1[1]), "the pretrained backbone is the same for every stage"
    assert _same(stage1[0], _head_and_backbone(cfg, "stage1")[0]), "a rerun or resume builds the same head"
    other_seed = replace(cfg, seed=cfg.seed + 100)
    assert not _same(stage1[0], _head_and_backbone(other_seed, "stage1")[0])
    same_init = replace(cfg, selftrain=replace(cfg.selftrain, fresh_init=False))
    assert _same(_head_and_backbone(same_init, "stage2")[0], teacher[0]), "fresh_init off: the teacher's head"


def test_runs_of_neighbouring_seeds_share_no_stage_head():
    cfg = get_preset("test")
    heads = {(seed, stage): _head_and_backbone(replace(cfg, seed=seed), stage)[0]
             for seed in (0, 1, 2) for stage in ("teacher", "stage1", "stage2")}
    pairs = [(a, b) for a in heads for b in heads if a < b]
    assert not [(a, b) for a, b in pairs if _same(heads[a], heads[b])]
    # What runs made before the key did: seed 1's stage1 (index 2) was seed 0's stage2 (index 3).
    legacy = replace(cfg, selftrain=replace(cfg.selftrain, init_seed_stride=1))
    assert _same(_head_and_backbone(replace(legacy, seed=1), "stage1")[0],
                 _head_and_backbone(replace(legacy, seed=0), "stage2")[0])


def test_stage2_labels_of_unreliable_images_equal_predict_with_stage1(stpp_run: Path, synthetic_dataset: Path,
                                                                      tmp_path: Path):
    unreliable = [r["id"] for r in _csv(stpp_run / "scores.csv") if r["reliable"] == "0"]
    images = tmp_path / "images"
    images.mkdir()
    for image_id in unreliable:
        shutil.copy(synthetic_dataset / "images" / f"{image_id}.png", images)
    run_stpp("predict", stpp_run, "--images", images, "--out", tmp_path / "masks", "--stage", "stage1")
    for image_id in unreliable:
        predicted = read_mask(tmp_path / "masks" / f"{image_id}.png")
        relabelled = read_mask(stpp_run / "pseudo" / "stage1" / f"{image_id}.png")
        assert np.array_equal(predicted, relabelled), image_id


def test_the_teacher_learns_far_beyond_a_random_init_model(stpp_run: Path, synthetic_dataset: Path):
    metrics = json.loads((stpp_run / "metrics.json").read_text())
    dataset = FolderDataset.open(synthetic_dataset)
    val = read_split(synthetic_dataset / "val.txt")
    eval_set = EvalDataset(val, [dataset.image_path(i) for i in val], [dataset.mask_path(i) for i in val])
    cfg = get_preset("test")
    torch.manual_seed(0)
    untrained = build_model(cfg.model, 4)
    baseline = evaluate(untrained, eval_set, 4, torch.device("cpu"), cfg).miou() * 100
    assert metrics["stages"]["teacher"]["miou"] > max(60.0, baseline + 30), (metrics["stages"], baseline)
    # students train only a few steps in the test preset: ask them to learn, not to win
    assert metrics["stages"]["stage2"]["miou"] > baseline + 20, (metrics["stages"], baseline)


def test_eval_command_matches_the_runs_own_metrics(stpp_run: Path, synthetic_dataset: Path):
    result = run_stpp("eval", stpp_run, "--data", synthetic_dataset, "--split", synthetic_dataset / "val.txt",
                      "--stage", "teacher")
    printed = json.loads(result.stdout)
    metrics = json.loads((stpp_run / "metrics.json").read_text())
    assert printed["miou"] == metrics["stages"]["teacher"]["miou"]
    assert printed["per_class"] == metrics["stages"]["teacher"]["per_class"]
    assert json.loads((stpp_run / "eval" / "teacher-val.json").read_text()) == printed


def test_teacher_labels_and_last_stability_masks_come_from_one_pass(stpp_run: Path, synthetic_dataset: Path,
                                                                    tmp_path: Path):
    """The test preset labels with TTA, so the K-th checkpoint's pass writes both outputs."""
    events = read_events(stpp_run / "events.jsonl")
    passes = [e for e in events if e["kind"] == "labels" and "per_rank" in e.get("data", {})]
    assert [e["stage"] for e in passes][:3] == ["stability1", "stability2", "stability3+label:teacher"]
    assert passes[2]["data"]["views"] == 6 and passes[2]["data"]["per_rank"] == [16]
    # the stability masks of checkpoint 3 are its plain single-scale predictions
    unlabeled = read_split(synthetic_dataset / "unlabeled.txt")
    dataset = FolderDataset.open(synthetic_dataset)
    model = load_model(stpp_run / "checkpoints" / "teacher_ckpt3.pt")
    cfg = StppConfig.from_dict(json.loads((stpp_run / "config.json").read_text()))
    label_images(model, unlabeled, [dataset.image_path(i) for i in unlabeled], tmp_path, cfg, cfg.data.palette,
                 torch.device("cpu"), ListSink(), Activity.labelling("teacher"), tta=False)
    same = [np.mean(read_mask(tmp_path / f"{i}.png") == read_mask(stpp_run / "stability" / "ckpt3" / f"{i}.png"))
            for i in unlabeled]
    assert np.mean(same) > 0.999


def test_batched_tta_equals_the_per_view_loop():
    torch.manual_seed(0)
    model = build_model(get_preset("test").model, 4).eval()
    images = torch.randn(3, 3, 40, 56)
    with torch.inference_mode():
        batched = tta_predict(Predictor(model), images, (0.75, 1.0, 1.5), flip=True, keep_single_scale=True)
        loop = torch.cat([tta_predict(Predictor(model), images[i : i + 1], (0.75, 1.0, 1.5), flip=True,
                                      batch_views=False).probs for i in range(3)])
        plain = model(images)["out"].argmax(dim=1)
    assert torch.allclose(batched.probs, loop, atol=1e-6)
    assert torch.allclose(batched.probs.sum(dim=1), torch.ones(3, 40, 56), atol=1e-5)
    assert torch.equal(batched.single_scale, plain)


def test_labelling_batches_group_images_by_size():
    sizes = [(64, 48), (48, 64), (64, 48), (64, 48), (48, 64), (30, 30)]
    assert size_batches(sizes, 2) == [[0, 2], [3], [1, 4], [5]]
    assert size_batches(sizes, 1) == [[0], [2], [3], [1], [4], [5]]
