"""The torch-free core: its vocabulary, and that it loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from stpp.core.config import (
    LEGACY_VALUES,
    PRESET_NOTES,
    PRESETS,
    ConfigError,
    StppConfig,
    apply_overrides,
    get_preset,
)
from stpp.core.events import Activity, Event
from stpp.core.method import (
    METHODS,
    STAGES,
    labelled_copies,
    num_reliable,
    pause_points,
    stage_after_pause,
    stage_epochs,
    stage_names,
    stage_order,
)
from stpp.core.metrics import class_iou, confusion_matrix, mask_miou, mean_iou

HEAVY = ("torch", "torchvision", "gradio", "sqlite_utils", "cv2", "pandas", "pycocotools", "tqdm")


def test_core_imports_nothing_heavy():
    modules = sorted(p.stem for p in (REPO / "stpp" / "core").glob("*.py") if p.stem != "__init__")
    code = (f"import sys; import {', '.join('stpp.core.' + m for m in modules)}; "
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]; sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


def config(method: str, stage3: bool = False):
    cfg = get_preset("test")
    return replace(cfg, method=method, selftrain=replace(cfg.selftrain, stage3=stage3))


@pytest.mark.parametrize(("method", "stage3", "stages", "pauses"), [
    ("supervised", False, ("teacher",), ()),
    ("st", False, ("teacher", "st"), ("ranking",)),
    ("st", True, ("teacher", "st"), ("ranking",)),
    ("st++", False, ("teacher", "stage1", "stage2"), ("ranking", "stage1")),
    ("st++", True, ("teacher", "stage1", "stage2", "stage3"), ("ranking", "stage1", "stage2")),
])
def test_stages_and_pause_points_of_each_method(method, stage3, stages, pauses):
    cfg = config(method, stage3)
    assert stage_names(cfg) == stages
    assert pause_points(cfg) == pauses
    # Each pause is followed by the next training stage.
    assert [stage_after_pause(cfg, p) for p in pauses] == list(stages[1:len(pauses) + 1])
    assert sorted(stages, key=stage_order) == list(stages)


def test_a_pause_the_method_does_not_pass_is_refused():
    with pytest.raises(ValueError, match="cannot pause after 'stage1'"):
        stage_after_pause(config("st"), "stage1")
    assert set(METHODS) == {"supervised", "st", "st++"} and STAGES[0] == "teacher"


@pytest.mark.parametrize("activity", [
    Activity.training("teacher"), Activity.training("stage3"), Activity.stability(1), Activity.stability(3, True),
    Activity.labelling("teacher"), Activity.labelling("stage2"), Activity.ranking(), Activity.prediction("st"),
])
def test_an_activity_reads_back_from_its_text(activity):
    assert Activity.parse(str(activity)) == activity
    assert Event("labels", activity).activity == activity


def test_activity_texts_keep_the_run_folder_format():
    # events.jsonl and the store's events.stage column of earlier runs hold these texts.
    assert str(Activity.stability(3, labels_too=True)) == "stability3+label:teacher"
    assert str(Activity.labelling("stage1")) == "label:stage1"
    assert Activity.stability(3, labels_too=True).labelled_stage == "teacher"
    assert Activity.labelling("stage1").labelled_stage == "stage1"
    assert Activity.stability(2).labelled_stage is None and Activity.training("teacher").labelled_stage is None


@pytest.mark.parametrize("text", ["stability", "stability3+label:stage1", "label:nothing", "stage4", "check"])
def test_an_event_with_an_unknown_stage_text_is_refused_where_it_is_made(text):
    with pytest.raises(ValueError):
        Event("labels", text)
    assert Event("paused", "ranking").activity is None and Event("info").activity is None


def test_the_reliable_count_is_floor_of_n_times_r():
    assert [num_reliable(n, 0.5) for n in (0, 1, 7, 8)] == [0, 0, 3, 4]
    assert num_reliable(10, 0.3) == 3 and num_reliable(3, 1 / 3) == 1


def test_choice_words_are_checked_without_torch():
    cfg = get_preset("test")
    assert apply_overrides(cfg, ["model.backbone=resnet18", "optim.amp=bf16"]).model.backbone == "resnet18"
    for override in ("model.backbone=vgg16", "optim.amp=fp8", "method=mean-teacher", "selftrain.split=none"):
        with pytest.raises(ConfigError, match="is one of"):
            apply_overrides(cfg, [override])


@pytest.mark.parametrize("preset", ["pascal", "cityscapes", "camvid", "tiny"])
def test_paper_presets_train_every_stage_as_long_as_the_teacher(preset):
    cfg = apply_overrides(get_preset(preset), ["method=st++", "selftrain.stage3=true"])
    epochs = {stage: stage_epochs(cfg, stage) for stage in stage_names(cfg) + ("st",)}
    assert epochs == dict.fromkeys(("teacher", "stage1", "stage2", "stage3", "st"), cfg.optim.epochs)
    # The old cut stays one override away.
    short = apply_overrides(cfg, ["optim.student_epochs=80"])
    assert stage_epochs(short, "teacher") == cfg.optim.epochs and stage_epochs(short, "stage2") == 80


@pytest.mark.parametrize(("preset", "teacher", "students"), [("camvid-cpu", 80, 30), ("test", 12, 6)])
def test_cpu_presets_cut_the_students_where_the_readme_says(preset, teacher, students):
    cfg = get_preset(preset)
    assert stage_epochs(cfg, "teacher") == teacher
    assert [stage_epochs(cfg, s) for s in ("st", "stage1", "stage2", "stage3")] == [students] * 4


def test_the_teacher_doubles_a_labelled_list_under_the_threshold_and_students_do_not():
    cfg = get_preset("pascal")
    assert cfg.optim.teacher_double_below == 200
    assert [labelled_copies(cfg, "teacher", n, 0) for n in (1, 92, 199, 200, 1464)] == [2, 2, 2, 1, 1]
    off = apply_overrides(cfg, ["optim.teacher_double_below=0"])
    assert labelled_copies(off, "teacher", 12, 0) == 1
    # Students repeat their labelled images ceil(|pseudo| / |labelled|) times, whatever the list's length.
    assert [labelled_copies(cfg, stage, 46, 321) for stage in ("st", "stage1", "stage2")] == [7, 7, 7]
    assert labelled_copies(cfg, "stage1", 46, 0) == 1 and labelled_copies(cfg, "stage2", 300, 100) == 1


def test_a_config_round_trips_and_an_older_saved_config_means_the_old_behaviour():
    cfg = apply_overrides(get_preset("camvid-cpu"), ["selftrain.fresh_init=false", "optim.teacher_double_below=50"])
    assert StppConfig.from_dict(json.loads(cfg.to_json())) == cfg
    saved = json.loads(get_preset("camvid").to_json())
    for key in LEGACY_VALUES:
        section, name = key.split(".")
        del saved[section][name]
    old = StppConfig.from_dict(saved)
    assert (old.augment.cutout_redraw, old.optim.teacher_double_below, old.selftrain.fresh_init,
            old.selftrain.init_seed_stride) == (False, 0, False, 1)
    assert replace(old, augment=get_preset("camvid").augment, optim=get_preset("camvid").optim,
                   selftrain=get_preset("camvid").selftrain) == get_preset("camvid")
    # A new config gets the paper's way; a partial dict without the sections gets the defaults.
    new = get_preset("camvid")
    assert (new.augment.cutout_redraw, new.optim.teacher_double_below, new.selftrain.fresh_init,
            new.selftrain.init_seed_stride) == (True, 200, True, 7919)
    assert StppConfig.from_dict({"method": "st"}).selftrain.fresh_init


def test_numpy_iou_skips_ignore_in_either_mask_and_absent_classes():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = np.array([[0, 1, 1, 1], [2, 0, 2, 255]])
    matrix = confusion_matrix(truth, prediction, 4)
    assert matrix.tolist()[:3] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0]]
    iou = class_iou(matrix)
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2]) and np.isnan(iou[3])
    assert mean_iou(matrix) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert mask_miou(truth, truth, 4) == 1.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([4]), np.array([0]), 4)


def test_no_module_outside_core_defines_the_stage_vocabulary():
    # The words live in stpp/core/method.py; a second literal list of them is a copy that can drift.
    offenders = []
    for path in list((REPO / "stpp").rglob("*.py")) + list((REPO / "ui").rglob("*.py")) + [REPO / "app.py"]:
        if path.parent.name == "core":
            continue
        text = Path(path).read_text()
        if '"stage1", "stage2"' in text or "'stage1', 'stage2'" in text or '"supervised", "st", "st++"' in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_every_preset_says_what_it_is_for():
    assert set(PRESET_NOTES) == set(PRESETS)
    assert all("CPU" in PRESET_NOTES[name] for name in ("camvid-cpu", "tiny"))
    assert all("GPU" in PRESET_NOTES[name] for name in ("pascal", "cityscapes", "camvid"))
