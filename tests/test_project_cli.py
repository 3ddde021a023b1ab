"""``python -m stpp project ...`` on a real store: create, import, add, import-labels, list, status, errors;
and project runs driven by the run verbs alone (launch, follow, review, continue, cancel, resume) with
the real job runner and worker."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_stpp
from PIL import Image
from test_jobs import imported_events, kill_group, log_of, wait_for

from stpp.backends.local import worker_alive
from stpp.cli.main import main
from stpp.cli.project_args import add_project_parser
from stpp.cli.projects import run_project_command
from stpp.core.classes import load_classes
from stpp.core.layout import RunLayout
from stpp.core.masks import read_mask
from stpp.jobs import JobRunner
from stpp.services.review import latest_decisions
from stpp.store import open_store, project_summary
from stpp.store.runs import get_run, list_events

REPO = Path(__file__).resolve().parent.parent


def cli(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    code = main(["project", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_create_import_list_status(capsys, workspace: Path, demo_dir: Path, tmp_path: Path):
    code, out, _ = cli(capsys, "create", "hand", "--class-names", "sky,road=#804080,car")
    assert code == 0 and "3 classes: sky, road, car" in out

    code, out, err = cli(capsys, "import", "demo", "--data", demo_dir)
    assert (code, err) == (0, "")
    assert "created project 'demo'" in out and "project 'demo': 84 added, 0 skipped, 0 failed" in out

    code, out, _ = cli(capsys, "import", "demo", "--data", demo_dir)
    assert code == 0 and "0 added, 84 skipped, 0 failed" in out

    code, out, _ = cli(capsys, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["project", "classes", "labelled", "unlabelled", "validation", "gt", "masks",
                                "runs", "created"]
    assert lines[1].split()[:7] == ["demo", "11", "12", "60", "12", "24", "0"]
    assert lines[2].split()[:2] == ["hand", "3"]

    code, out, _ = cli(capsys, "status", "demo")
    assert code == 0
    assert "   3  #804080  road" in out
    assert "images: 12 labelled, 60 unlabelled, 12 validation (84 in all)" in out
    assert "masks: 24 ground_truth, 60 reference, 0 pseudo, 0 reviewed" in out

    code, out, _ = cli(capsys, "status", "demo", "--json")
    status = json.loads(out)
    assert status["classes"] == load_classes(demo_dir / "classes.json").to_dict()
    assert status["disk"]["images"] > 0 and status["disk"]["in_place"] == 0
    assert [p["name"] for p in json.loads(cli(capsys, "list", "--json")[1])] == ["demo", "hand"]


def test_import_with_split_lists_in_place_into_another_workspace(capsys, tmp_path: Path, synthetic_dataset: Path):
    other = tmp_path / "elsewhere"
    code, out, _ = cli(capsys, "import", "syn", "--data", synthetic_dataset, "--labeled",
                       synthetic_dataset / "labeled.txt", "--val", "val.txt", "--in-place", "--workspace", other)
    assert code == 0 and "16 added" in out
    with open_store(other) as store:
        assert project_summary(store, "syn").images == {"labelled": 8, "unlabelled": 0, "validation": 8}
        assert {r["in_place"] for r in store.db.query("SELECT in_place FROM images")} == {1}


def test_add_reports_failed_files_and_exits_1(capsys, workspace: Path, tmp_path: Path):
    cli(capsys, "create", "p", "--class-names", "a,b")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_text("not a picture")
    code, out, err = cli(capsys, "add", "p", tmp_path / "ok.png", tmp_path / "bad.jpg", "--role", "unlabeled")
    assert code == 1 and err == ""
    assert f"failed: {tmp_path / 'bad.jpg'}: not an image" in out
    assert "project 'p': 1 added, 0 skipped, 1 failed" in out


def test_import_labels_from_a_voc_folder(capsys, workspace: Path, tmp_path: Path):
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\nroad:128,64,128::\n")
    cli(capsys, "create", "p", "--labelmap", tmp_path / "labelmap.txt")
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(tmp_path / "frame.png")
    cli(capsys, "add", "p", tmp_path / "frame.png", "--role", "unlabelled")
    voc = tmp_path / "voc"
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "labelmap.txt").write_text((tmp_path / "labelmap.txt").read_text())
    colours = np.zeros((6, 8, 3), np.uint8)
    colours[3:] = (128, 64, 128)
    Image.fromarray(colours).save(voc / "SegmentationClass" / "frame.png")

    code, out, _ = cli(capsys, "import-labels", "p", "--data", voc, "--verbose")

    assert code == 0 and "added:" in out and "moved from unlabelled to labelled" in out
    with open_store(workspace) as store:
        assert project_summary(store, "p").images["labelled"] == 1


@pytest.mark.parametrize("args, message", [
    (["status", "nope"], "no project 'nope'"),
    (["import", "x", "--data", "/does/not/exist"], "no such folder"),
    (["create", "x", "--class-names", " , "], "the class list is empty"),
    (["add", "nope", ".", "--role", "labelled"], "no project 'nope'"),
    (["launch", "nope", "--method", "st++", "--preset", "test"], "no project 'nope'"),
    (["runs", "nope"], "no project 'nope'"),
    (["follow", "7"], "no run 7"),
    (["cancel", "7"], "no run 7"),
    (["resume", "7"], "no run 7"),
    (["continue", "7"], "no run 7"),
    (["review", "7", "img", "accept"], "no run 7"),
])
def test_errors_are_one_line_and_exit_2(capsys, workspace: Path, args, message):
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_malformed_classes_file_names_the_line(capsys, workspace: Path, tmp_path: Path):
    path = tmp_path / "classes.json"
    path.write_text('{\n  "classes": [\n    "a",\n    7\n  ]\n}\n')
    code, _, err = cli(capsys, "create", "x", "--classes", path)
    assert code == 2 and f"{path}, line 4: class 1 has an invalid name 7" in err


def test_parser_plugs_into_another_cli_and_reads_stpp_home(workspace: Path, capsys):
    parser = argparse.ArgumentParser(prog="python -m stpp")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run")
    add_project_parser(commands)
    args = parser.parse_args(["project", "create", "env", "--class-names", "a"])
    assert args.command == "project" and run_project_command(args) == 0
    assert (workspace / "stpp.db").is_file()  # $STPP_HOME, set by the workspace fixture


def test_runs_without_importing_torch(workspace: Path):
    code = ("import sys; from stpp.cli.main import main; rc = main(['project', 'list']); "
            "sys.exit(90 if 'torch' in sys.modules else rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no projects" in result.stdout


def test_help_does_not_import_torch():
    code = ("import runpy, sys; sys.argv = ['stpp', '--help']\n"
            "try:\n    runpy.run_module('stpp', run_name='__main__')\n"
            "except SystemExit as end:\n    sys.exit(90 if 'torch' in sys.modules else end.code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "project" in result.stdout


def test_export_writes_a_voc_zip_that_torchvision_reads(capsys, workspace: Path, demo_dir: Path, tmp_path: Path):
    import zipfile

    from torchvision.datasets import VOCSegmentation

    code, _, _ = cli(capsys, "import", "demo", "--data", demo_dir, "--labeled", demo_dir / "labeled.txt",
                     "--unlabeled", demo_dir / "unlabeled.txt", "--val", demo_dir / "val.txt")
    assert code == 0
    code, out, _ = cli(capsys, "export", "demo", "--format", "voc", "--out", tmp_path / "demo.zip",
                       "--only", "ground_truth")
    assert code == 0 and "24 images" in out
    zipfile.ZipFile(tmp_path / "demo.zip").extractall(tmp_path / "voc")
    train = VOCSegmentation(root=str(tmp_path / "voc"), year="2012", image_set="train")
    val = VOCSegmentation(root=str(tmp_path / "voc"), year="2012", image_set="val")
    assert (len(train), len(val)) == (12, 12)
    image, target = train[0]
    assert image.size == target.size == (240, 180)
    code, _, err = cli(capsys, "export", "demo", "--out", tmp_path / "x.zip", "--only", "everything")
    assert code == 2 and "everything" in err and not (tmp_path / "x.zip").exists()


SHORT_EPOCHS = ("--set", "optim.epochs=3", "--set", "optim.student_epochs=1")
"""The fewest epochs the test preset allows (K = 3 teacher checkpoints); every other default stays (TTA on)."""


def user(*args: str | int | Path, code: int = 0) -> subprocess.CompletedProcess:
    """``python -m stpp project ARGS`` as a user types it (the workspace is $STPP_HOME); checks the exit code."""
    result = run_stpp("project", *map(str, args), check=False)
    assert result.returncode == code, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def launched_run_id(result: subprocess.CompletedProcess) -> int:
    found = re.match(r"run (\d+) \(st\+\+, test\): (queued|running)", result.stdout)
    assert found, result.stdout
    return int(found.group(1))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    return result.stderr


def follow(workspace: Path, run_id: int, code: int = 0) -> subprocess.CompletedProcess:
    """``project follow RUN_ID``, with the worker's log when it does not end as expected."""
    result = run_stpp("project", "follow", str(run_id), check=False)
    if result.returncode != code:
        with open_store(workspace) as store:
            pytest.fail(f"follow exited {result.returncode}: {result.stdout}\n{log_of(store, run_id)}")
    return result


def stop_worker(workspace: Path, run_id: int) -> None:
    """Kill a run's worker if a failed test left it running."""
    with open_store(workspace) as store:
        pid = get_run(store, run_id).pid
    if pid and worker_alive(pid, run_id):
        kill_group(pid)


def train_set(layout: RunLayout, stage: str) -> dict[str, str]:
    """Image name -> mask source of what ``stage`` trained on."""
    with open(layout.train_set_path(stage), newline="") as handle:
        return {row["id"]: row["source"] for row in csv.DictReader(handle)}


def test_a_reviewed_st_pp_run_from_launch_to_done_through_the_cli(workspace: Path, synthetic_dataset: Path,
                                                                   tmp_path: Path):
    user("import", "synth", "--data", synthetic_dataset)
    run_id = launched_run_id(user("launch", "synth", "--method", "st++", "--preset", "test", *SHORT_EPOCHS,
                                  "--device", "cpu", "--review"))
    try:
        paused = follow(workspace, run_id)
        assert paused.stdout.count("\n") == 1 and "awaiting review" in paused.stdout
        assert "paused after ranking for review" in paused.stdout
        assert "[teacher] training teacher" in paused.stderr and "[ranking]" in paused.stderr  # the progress
        refused = user("launch", "synth", "--method", "st", "--preset", "test", code=2)
        assert f"already has an unfinished run: run {run_id} is awaiting review" in one_error_line(refused)

        layout = RunLayout(workspace / "runs" / str(run_id))
        with open(layout.scores_path, newline="") as handle:
            ranked = [row["id"] for row in csv.DictReader(handle)]
        accepted, rejected, corrected = ranked[0], ranked[1], ranked[-1]
        fixed = read_mask(layout.pseudo_dir("teacher") / f"{corrected}.png").copy()
        fixed[:16, :16] = 3
        Image.fromarray(fixed).save(tmp_path / "fixed.png")
        Image.fromarray(fixed[:10]).save(tmp_path / "cropped.png")
        assert user("review", run_id, accepted, "accept").stdout == f"{accepted}: accepted by local (run {run_id})\n"
        user("review", run_id, rejected, "reject", "--user", "ann")
        wrong_size = user("review", run_id, corrected, "correct", "--mask", tmp_path / "cropped.png", code=2)
        assert "64x64" in one_error_line(wrong_size)
        user("review", run_id, corrected, "correct", "--mask", tmp_path / "fixed.png")

        user("continue", run_id)
        assert "paused after stage1 for review" in follow(workspace, run_id).stdout
        user("continue", run_id, "--no-more-review")
        assert f"run {run_id} (st++, test): done, stage stage2, 100%" in follow(workspace, run_id).stdout
    finally:
        stop_worker(workspace, run_id)

    runs = json.loads(user("runs", "synth", "--json").stdout)
    assert [(r["id"], r["status"], r["preset"]) for r in runs] == [(run_id, "done", "test")]
    assert list(runs[0]["val_miou"]) == ["teacher", "stage1", "stage2"]
    assert re.search(rf"^{run_id} +st\+\+ +test +done +stage2 +100% +[\d.]+ \(stage2\)$",
                     user("runs", "synth").stdout, re.M)
    with open_store(workspace) as store:
        assert get_run(store, run_id).cfg.pseudo.tta  # the preset's default, kept
        latest = latest_decisions(store, "synth")
        assert {name: (d.decision, d.user) for name, d in latest.items()} == {
            accepted: ("accepted", "local"), rejected: ("rejected", "ann"), corrected: ("corrected", "local")}
        np.testing.assert_array_equal(read_mask(store.path(latest[corrected].mask_path)), fixed)
    for stage in ("stage1", "stage2"):
        sources = train_set(layout, stage)
        assert {name for name, source in sources.items() if source == "reviewed"} == {accepted, corrected}, stage
        assert rejected not in sources, stage


def test_cancel_and_resume_a_running_run_through_the_cli(workspace: Path, synthetic_dataset: Path):
    user("import", "synth", "--data", synthetic_dataset)
    run_id = launched_run_id(user("launch", "synth", "--method", "st++", "--preset", "test",
                                  "--set", "optim.epochs=500", "--device", "cpu"))
    try:
        with open_store(workspace) as store:
            jobs = JobRunner(store)  # imports what the worker's folder holds, as the app or a CLI command does
            wait_for(lambda: imported_events(jobs, run_id, ["epoch"]), what="the teacher's first epoch")
            assert "asked to stop after its current step" in user("cancel", run_id).stdout
            assert f"run {run_id} (st++, test): cancelled" in follow(workspace, run_id, code=130).stdout
            assert json.loads(user("runs", "synth", "--json").stdout)[0]["resumable"] is True

            assert f"run {run_id} (st++, test): running" in user("resume", run_id).stdout
            wait_for(lambda: any(e.message.startswith("resumed teacher")
                                 for e in imported_events(jobs, run_id, ["info"])),
                     what="the resumed worker to continue from last.pt")
            user("cancel", run_id)
            follow(workspace, run_id, code=130)
            assert len(list_events(store, run_id, kinds=["worker_start"])) == 2
            nothing_to_cancel = user("cancel", run_id, code=2)
        assert "is cancelled; there is nothing to cancel" in one_error_line(nothing_to_cancel)
    finally:
        stop_worker(workspace, run_id)


def test_a_launch_that_cannot_start_is_one_line_and_exit_2(capsys, workspace: Path, synthetic_dataset: Path):
    cli(capsys, "create", "empty", "--class-names", "a,b")
    code, out, err = cli(capsys, "launch", "empty", "--method", "supervised", "--preset", "test")
    assert (code, out) == (2, "") and "has no labelled images" in err and err.count("\n") == 1
    cli(capsys, "import", "synth", "--data", synthetic_dataset)
    code, out, err = cli(capsys, "launch", "synth", "--method", "st++", "--preset", "test", "--set", "optim.nonsense=1")
    assert (code, out) == (2, "") and "optim.nonsense" in err and err.count("\n") == 1
    assert json.loads(cli(capsys, "runs", "synth", "--json")[1]) == []
