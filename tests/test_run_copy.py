"""``project import-run``: a run folder made elsewhere (here: a headless ``python -m stpp run``) becomes a
project run with the rows a project run gets, and a folder that does not fit the project is refused
with nothing recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_stpp
from test_jobs import FAST, import_project

from stpp.core.layout import RunLayout
from stpp.store import open_store
from stpp.store.projects import create_project
from stpp.store.runs import count_rows, get_run, list_checkpoints, list_events, list_runs, run_metrics


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A finished test-preset ST++ run folder of the synthetic dataset, made by the headless CLI."""
    out = tmp_path_factory.mktemp("elsewhere") / "run"
    data = synthetic_dataset
    run_stpp("run", "--data", data, "--labeled", data / "labeled.txt", "--unlabeled", data / "unlabeled.txt",
             "--val", data / "val.txt", "--method", "st++", "--preset", "test", "--out", out, "--device", "cpu",
             *[arg for key, value in FAST.items() for arg in ("--set", f"{key}={value}")])
    return out


def import_run(workspace: Path, *args, code: int = 0):
    result = run_stpp("project", "import-run", *args, "--workspace", workspace, check=False)
    assert result.returncode == code, result.stderr[-3000:]
    return result


def test_a_headless_run_folder_becomes_a_done_project_run(workspace: Path, synthetic_dataset: Path,
                                                          headless_run: Path):
    with open_store(workspace) as store:
        import_project(store, synthetic_dataset, "synth")
    source_files = sorted(p.relative_to(headless_run) for p in headless_run.rglob("*") if p.is_file())

    result = import_run(workspace, "synth", headless_run)
    assert result.stdout.startswith("run 1 (st++, test): done, "), result.stdout
    assert "16 scores" in result.stdout

    with open_store(workspace) as store:
        run = get_run(store, 1)
        assert (run.status, run.resumable, run.progress, run.error) == ("done", False, 1.0, None)
        copy = store.path(run.run_dir)
        assert copy == workspace / "runs" / "1"
        copied = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
        assert copied == [p for p in source_files if p.name != ".lock"]
        assert not list((workspace / "runs").glob(".import-*"))

        assert list(run_metrics(store, run.id)) == ["teacher", "stage1", "stage2"]
        checkpoints = list_checkpoints(store, run.id)
        assert [(c.stage, c.epoch) for c in checkpoints] == [("teacher", 1), ("teacher", 2), ("teacher", 3),
                                                             ("stage1", 1), ("stage2", 1)]
        # The copy's files, not the source's, even where the events name the source's paths.
        assert all(c.path.startswith("runs/1/checkpoints/") and (workspace / c.path).is_file() for c in checkpoints)
        scores = list(store.db.query("SELECT rank FROM scores WHERE run_id = ? ORDER BY rank", [run.id]))
        assert [s["rank"] for s in scores] == list(range(1, 17))
        pseudo = list(store.db.query("SELECT stage, path FROM masks WHERE kind = 'pseudo' AND run_id = ?", [run.id]))
        assert {stage: sum(m["stage"] == stage for m in pseudo) for stage in ("teacher", "stage1")} == {
            "teacher": 16, "stage1": 8}
        assert all(m["path"].startswith("runs/1/pseudo/") for m in pseudo)

        events = list_events(store, run.id)
        kinds = [e.kind for e in events]
        assert kinds.count("run_start") == kinds.count("run_end") == 1
        assert any(e.kind == "info" and e.message == f"imported from {headless_run}" for e in events)
        written = [json.loads(line) for line in RunLayout(copy).events_path.read_text().splitlines()]
        assert [e.stage for e in events if e.kind == "stage_end"] == [
            e.get("stage") for e in written if e["kind"] == "stage_end"] == ["teacher", "stage1", "stage2"]
        assert run.events_read == RunLayout(copy).events_path.stat().st_size

    # The same folder again is a second run with rows of its own.
    assert import_run(workspace, "synth", headless_run).stdout.startswith("run 2 (st++, test): done, ")
    with open_store(workspace) as store:
        assert count_rows(store, "scores", 2) == count_rows(store, "scores", 1) == 16
        assert count_rows(store, "masks", 2, kind="pseudo") == count_rows(store, "masks", 1, kind="pseudo")


def test_a_run_folder_copied_before_it_ended_is_imported_failed(workspace: Path, synthetic_dataset: Path,
                                                                headless_run: Path, tmp_path: Path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(headless_run, unfinished)
    events = RunLayout(unfinished).events_path
    lines = events.read_text().splitlines()
    events.write_text("".join(line + "\n" for line in lines if json.loads(line)["kind"] != "run_end"))
    with open_store(workspace) as store:
        import_project(store, synthetic_dataset, "synth")

    assert import_run(workspace, "synth", unfinished).stdout.startswith("run 1 (st++, test): failed")
    with open_store(workspace) as store:
        run = get_run(store, 1)
        assert (run.status, run.resumable) == ("failed", False)
        assert "imported unfinished" in run.error and not run.can_resume


def test_a_folder_that_does_not_fit_the_project_is_refused_with_nothing_recorded(
        workspace: Path, synthetic_dataset: Path, headless_run: Path, tmp_path: Path):
    with open_store(workspace) as store:
        create_project(store, "other-classes", ["road", "sky"])
        fewer = create_project(store, "fewer-images", json.loads((synthetic_dataset / "classes.json").read_text()))
        store_classes = fewer.classes.names
    assert store_classes  # same classes as the run, but no images
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()

    refused = {
        "other-classes": import_run(workspace, "other-classes", headless_run, code=2).stderr,
        "fewer-images": import_run(workspace, "fewer-images", headless_run, code=2).stderr,
        "not a run": import_run(workspace, "fewer-images", not_a_run, code=2).stderr,
    }
    assert "has road, sky" in refused["other-classes"]
    assert "names 16 image(s) the project does not hold" in refused["fewer-images"]
    assert "and 11 more; import them into the project first" in refused["fewer-images"]
    assert "is not a run folder: it needs config.json and events.jsonl" in refused["not a run"]
    assert all(text.startswith("error: ") and text.count("\n") == 1 for text in refused.values())
    with open_store(workspace) as store:
        assert list_runs(store) == []
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
