"""The project store on a real SQLite file: schema, demo import, seeding, refusals, ingestion errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
from PIL import Image

from stpp.core.classes import ClassInfo, DataError, format_labelmap
from stpp.core.events import Event
from stpp.core.masks import read_mask, write_mask
from stpp.store import (
    SCHEMA_VERSION,
    StoreError,
    add_class,
    create_project,
    delete_class,
    delete_images,
    delete_project,
    disk_usage,
    find_orphan_files,
    get_project,
    import_folder_dataset,
    list_project_summaries,
    list_projects,
    load_classes,
    load_labelmap,
    merge_classes,
    open_store,
    parse_class_names,
    project_summary,
    recolour_class,
    remove_orphan_files,
    rename_class,
    seed_demo_project,
)
from stpp.store.db import APPLICATION_ID
from stpp.store.migrations import MIGRATIONS, V1
from stpp.store.runs import get_run, list_events, record_event

TABLES = {"projects", "images", "masks", "runs", "checkpoints", "events", "scores", "reviews"}


def snapshot(folder: Path) -> dict[str, str]:
    """sha1 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def store(workspace: Path):
    with open_store(workspace) as opened:
        yield opened


@pytest.fixture
def demo_store(store, demo_dir: Path):
    seed_demo_project(store, demo_dir)
    return store


def test_schema_is_created_with_wal_foreign_keys_and_version(store, workspace: Path):
    assert (workspace / "stpp.db").is_file()
    assert all((workspace / name).is_dir() for name in ("images", "masks", "runs"))
    assert TABLES <= set(store.db.table_names())
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.schema_version() == SCHEMA_VERSION
    # WAL is a property of the file: a fresh plain connection sees it too.
    conn = sqlite3.connect(workspace / "stpp.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    columns = {name: set(store.db[name].columns_dict) for name in TABLES}
    assert {"name", "classes", "palette", "ignore_index", "created"} <= columns["projects"]
    assert {"project_id", "name", "hash", "path", "in_place", "width", "height", "role"} <= columns["images"]
    assert {"image_id", "kind", "run_id", "stage", "path"} <= columns["masks"]
    assert {"project_id", "method", "config", "status", "resumable", "stage", "progress", "pid",
            "heartbeat", "error", "created", "started", "finished"} <= columns["runs"]
    assert {"run_id", "stage", "epoch", "path", "metrics"} <= columns["checkpoints"]
    assert {"run_id", "time", "kind", "stage", "step", "total", "loss", "miou", "message", "data"} <= columns["events"]
    assert {"run_id", "image_id", "stability", "reliable", "rank", "checkpoint_miou"} <= columns["scores"]
    assert {"image_id", "run_id", "decision", "mask_id", "time", "user"} <= columns["reviews"]


def test_reopening_keeps_data_and_version(store, workspace: Path, demo_dir: Path):
    create_project(store, "kept", demo_dir / "classes.json")
    store.close()
    with open_store(workspace) as again:
        assert again.schema_version() == SCHEMA_VERSION
        assert get_project(again, "kept").classes.num_classes == 11


def test_foreign_keys_are_enforced(store):
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as db:
            db["masks"].insert({"image_id": 12345, "kind": "ground_truth", "path": "x.png", "created": "now"})


def test_demo_import_counts_and_mask_kinds(demo_store, workspace: Path, demo_dir: Path):
    summary = project_summary(demo_store, "camvid-demo")
    assert summary.images == {"labelled": 12, "unlabelled": 60, "validation": 12}
    assert summary.masks["ground_truth"] == 24
    assert summary.masks["reference"] == 60
    assert summary.masks["pseudo"] == summary.masks["reviewed"] == 0
    assert summary.project.classes.names == tuple(json.loads((demo_dir / "classes.json").read_text())["classes"])

    kinds = {(row["role"], row["kind"]): row["n"] for row in demo_store.db.query(
        "SELECT role, kind, count(*) AS n FROM images JOIN masks ON masks.image_id = images.id GROUP BY 1, 2")}
    assert kinds == {("labelled", "ground_truth"): 12, ("validation", "ground_truth"): 12,
                     ("unlabelled", "reference"): 60}


def test_demo_import_copies_files_before_rows(demo_store, workspace: Path, demo_dir: Path):
    for row in demo_store.db.query("SELECT * FROM images"):
        stored = workspace / row["path"]
        assert stored.is_file() and not row["in_place"]
        original = (demo_dir / "images" / f"{row['name']}.jpg").read_bytes()
        assert hashlib.sha1(original).hexdigest() == row["hash"]
        assert stored.read_bytes() == original  # upright RGB JPEGs are kept byte for byte
        assert (row["width"], row["height"]) == (240, 180)
    for row in demo_store.db.query("SELECT masks.path, images.name FROM masks JOIN images ON images.id = image_id"):
        np.testing.assert_array_equal(read_mask(workspace / row["path"]),
                                      read_mask(demo_dir / "masks" / f"{row['name']}.png"))


def test_seeding_twice_is_idempotent(demo_store, workspace: Path, demo_dir: Path):
    first = get_project(demo_store, "camvid-demo")
    counts = {t: demo_store.db[t].count for t in ("projects", "images", "masks")}
    files = snapshot(workspace / "images")
    assert seed_demo_project(demo_store, demo_dir).id == first.id
    demo_store.close()
    with open_store(workspace) as again:
        assert seed_demo_project(again, demo_dir).id == first.id
        assert {t: again.db[t].count for t in counts} == counts
    assert snapshot(workspace / "images") == files


def test_seeding_finishes_an_interrupted_import(store, demo_dir: Path):
    project = create_project(store, "camvid-demo", demo_dir / "classes.json")
    report = import_folder_dataset(store, project, demo_dir, labeled=demo_dir / "labeled.txt")
    assert len(report.added) == 12
    seed_demo_project(store, demo_dir)
    assert project_summary(store, project).images == {"labelled": 12, "unlabelled": 60, "validation": 12}


def test_newer_schema_is_refused_without_modification(workspace: Path, demo_dir: Path):
    with open_store(workspace) as store:
        seed_demo_project(store, demo_dir)
    conn = sqlite3.connect(workspace / "stpp.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = snapshot(workspace)
    with pytest.raises(StoreError, match="newer") as caught:
        open_store(workspace)
    assert "\n" not in str(caught.value)
    assert snapshot(workspace) == before


def test_a_version_1_store_is_upgraded_and_its_events_keep_kind_and_message(workspace: Path):
    # A store as stpp's first schema wrote it: the event kind packed into the message.
    workspace.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(workspace / "stpp.db")
    conn.executescript(V1)
    conn.executescript(
        "INSERT INTO projects (id, name, classes, palette, created) VALUES (1, 'old', '[\"a\"]', '[[0,0,0]]', 't');"
        "INSERT INTO runs (id, project_id, method, config, created) VALUES (1, 1, 'st++', '{}', 't');"
        "INSERT INTO events (run_id, time, stage, message) VALUES (1, 't', 'teacher', 'eval: teacher: val mIoU 55.26');"
        "INSERT INTO events (run_id, time, stage, message) VALUES (1, 't', 'teacher', 'stage_end');"
        f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;")
    conn.close()

    with open_store(workspace) as store:
        assert store.schema_version() == SCHEMA_VERSION == 5
        old = list_events(store, 1)
        assert [(e.kind, e.message, e.data) for e in old] == [("eval", "teacher: val mIoU 55.26", {}),
                                                              ("stage_end", "", {})]
        record_event(store, 1, Event("stage_end", "stage1", message="stage1 trained",
                                     data={"peak_memory_mb": 2259.0}))
        assert [(e.kind, e.message, e.data) for e in list_events(store, 1, kinds=["stage_end"])] == [
            ("stage_end", "", {}), ("stage_end", "stage1 trained", {"peak_memory_mb": 2259.0})]
        assert [e.kind for e in list_events(store, 1, kinds=["eval"])] == ["eval"]


def test_a_version_2_store_keeps_each_runs_latest_review_plan_in_its_row(workspace: Path):
    # v2 kept the plan as the text of review_plan events; the latest one of a run wins.
    workspace.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(workspace / "stpp.db")
    conn.executescript(V1)
    MIGRATIONS[1](sqlite_utils.Database(conn))
    config = json.dumps({"method": "st++", "preset": "test"})
    conn.executescript(
        "INSERT INTO projects (id, name, classes, palette, created) VALUES (1, 'old', '[\"a\"]', '[[0,0,0]]', 't');"
        + "".join(f"INSERT INTO runs (id, project_id, method, config, created) VALUES ({i}, 1, 'st++', '{config}', 't');"
                  for i in (1, 2, 3))
        + "INSERT INTO events (run_id, time, kind, message) VALUES (1, 't', 'review_plan', 'pause after: ranking');"
        "INSERT INTO events (run_id, time, kind, message) VALUES (1, 't', 'review_plan', "
        "'pause after: ranking, stage1');"
        "INSERT INTO events (run_id, time, kind, message) VALUES (2, 't', 'review_plan', 'pause after: none');"
        f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 2;")
    conn.close()

    with open_store(workspace) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert [get_run(store, i).review_plan for i in (1, 2, 3)] == [("ranking", "stage1"), (), ()]
        # v4: an old run was a local worker's, with nothing of its folder imported yet.
        old = get_run(store, 1)
        assert (old.backend, old.job_id, old.attempt, old.events_read) == ("local", None, 0, 0)
        assert old.backend_options == {}  # v5: launched with the backend's own settings


def test_workspace_that_is_a_file_is_refused(tmp_path: Path):
    path = tmp_path / "not-a-folder"
    path.write_text("keep me")
    with pytest.raises(StoreError, match="is a file"):
        open_store(path)
    assert path.read_text() == "keep me"


def test_workspace_that_cannot_be_created_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create"):
        open_store(tmp_path / "file" / "workspace")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_workspace_is_refused(tmp_path: Path):
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            open_store(path)
        assert list(path.iterdir()) == []
    finally:
        path.chmod(0o755)


def test_unwritable_workspace_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same refusal where the suite runs as root: the access check says no."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(StoreError, match="not writable"):
        open_store(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"this is not a database", None])
def test_a_file_that_is_not_an_stpp_store_is_refused(workspace: Path, content: bytes | None):
    db_path = workspace / "stpp.db"
    if content is None:  # a real SQLite file of some other program
        conn = sqlite3.connect(db_path)
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
        conn.close()
    else:
        db_path.write_bytes(content)
    before = snapshot(workspace)
    with pytest.raises(StoreError):
        open_store(workspace)
    assert snapshot(workspace) == before


def test_project_names_are_unique(store, demo_dir: Path):
    create_project(store, "a", demo_dir / "classes.json")
    with pytest.raises(StoreError, match="already exists"):
        create_project(store, " a ", demo_dir / "classes.json")


@pytest.mark.parametrize("name", ["street scenes", "-x", "a/b", "caf\u00e9", "tab\there"])
def test_a_project_name_is_what_a_shell_takes_as_it_is(store, demo_dir: Path, name: str):
    with pytest.raises(StoreError, match="only letters, digits"):
        create_project(store, name, demo_dir / "classes.json")
    assert [p.name for p in list_projects(store)] == []
    assert create_project(store, "street-scenes_v1.2+", demo_dir / "classes.json").name == "street-scenes_v1.2+"


@pytest.mark.parametrize("text, line, problem", [
    ('{\n  "classes": ["a", "b"],\n  "palette": [[0, 0, 0]] oops\n}\n', 3, "malformed JSON"),
    ('{\n  "name": "x",\n  "classes": []\n}', 3, "non-empty list"),
    ('{\n  "classes": [\n    "a",\n    ""\n  ]\n}', 4, "invalid name"),
    ('{\n  "classes": ["a", "b"],\n  "palette": [\n    [0, 0, 0],\n    [0, 0, 256]\n  ]\n}', 5, r"colour 1 \(b\)"),
])
def test_malformed_classes_json_is_refused_with_the_line(store, tmp_path: Path, text: str, line: int, problem: str):
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as caught:
        load_classes(path)
    assert str(caught.value).startswith(f"{path}, line {line}")
    with pytest.raises(StoreError, match=f"line {line}"):
        create_project(store, "p", path)
    assert store.db["projects"].count == 0


def test_malformed_labelmap_is_refused_with_the_line(tmp_path: Path):
    path = tmp_path / "labelmap.txt"
    path.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64::\n")
    with pytest.raises(DataError, match=rf"{path}, line 3: colour '128,64' must be r,g,b"):
        load_labelmap(path)
    path.write_text("# nothing but comments\n\n")
    with pytest.raises(DataError, match="no labels"):
        load_labelmap(path)
    path.write_text("background:0,0,0::\nroad:128,64,128:part1:act\ncar:0,0,0::\n")
    with pytest.raises(DataError, match="line 3: colour 0,0,0 of 'car' is already used on line 1"):
        load_labelmap(path)


def test_classes_from_every_source_are_one_class_info(tmp_path: Path, demo_dir: Path):
    from stpp.data.datasets import ClassInfo as DatasetClassInfo
    from stpp.data.datasets import load_classes as dataset_load_classes

    assert DatasetClassInfo is ClassInfo and dataset_load_classes is load_classes
    info = load_classes(demo_dir / "classes.json")
    (tmp_path / "labelmap.txt").write_text(format_labelmap(info))
    assert load_labelmap(tmp_path / "labelmap.txt") == info
    by_hand = parse_class_names("sky, building=#800000")
    assert by_hand.names == ("sky", "building") and by_hand.palette[1] == (128, 0, 0)
    with pytest.raises(DataError, match="empty"):
        parse_class_names(" , ")


def test_delete_project_removes_rows_and_files(demo_store, workspace: Path):
    other = create_project(demo_store, "other", {"classes": ["x", "y"]})
    project = get_project(demo_store, "camvid-demo")
    delete_project(demo_store, project)
    assert [s.name for s in list_project_summaries(demo_store)] == [other.name]
    assert demo_store.db["images"].count == demo_store.db["masks"].count == 0
    assert not (workspace / "images" / str(project.id)).exists()
    assert not (workspace / "masks" / str(project.id)).exists()


def test_import_reports_bad_files_and_adds_the_rest(store, synthetic_dataset: Path, tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_dataset, root)
    (root / "images" / "labeled_000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("P", (10, 10)).save(root / "masks" / "labeled_001.png")
    Image.fromarray(np.full((64, 64), 7, np.uint8), mode="L").save(root / "masks" / "labeled_002.png")
    (root / "masks" / "val_000.png").unlink()
    with open(root / "unlabeled.txt", "a") as f:
        f.write("missing_id\n")
    project = create_project(store, "synthetic", root / "classes.json")

    report = import_folder_dataset(store, project, root)

    reasons = {r.name: r.reason for r in report.failed}
    assert set(reasons) == {"labeled_000", "labeled_001", "labeled_002", "val_000", "missing_id"}
    assert "corrupt" in reasons["labeled_000"]
    assert "10x10" in reasons["labeled_001"] and "64x64" in reasons["labeled_001"]
    assert "7 (4096 px)" in reasons["labeled_002"]
    assert "needs a mask" in reasons["val_000"]
    assert "no image named" in reasons["missing_id"]
    assert report.for_name("labeled_001")[0].source == str(root / "masks" / "labeled_001.png")
    assert all("labeled_00" in r.source or "val_000" in r.source or "unlabeled.txt" in r.source
               for r in report.failed)
    assert project_summary(store, project).images == {"labelled": 5, "unlabelled": 16, "validation": 7}
    # Synthetic images are PNGs: kept byte for byte; everything listed as a file exists.
    assert all((store.workspace / row["path"]).is_file() for row in store.db.query("SELECT path FROM images"))

    again = import_folder_dataset(store, project, root)
    assert len(again.added) == 0 and len(again.skipped) == 28


def test_concurrent_writers_and_a_reader_do_not_lock(workspace: Path, demo_dir: Path):
    """Two stores on the same file (as the app and a worker would have) write and read at once."""
    import threading

    with open_store(workspace) as setup:
        project = create_project(setup, "p", demo_dir / "classes.json")
        with setup.transaction() as db:
            run_id = db["runs"].insert({"project_id": project.id, "method": "st++", "config": "{}",
                                        "created": "t"}).last_pk
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            with open_store(workspace) as store:
                for step in range(100):
                    with store.transaction() as db:
                        db["events"].insert({"run_id": run_id, "time": "t", "step": step, "message": tag})
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read() -> None:
        try:
            with open_store(workspace) as store:
                for _ in range(100):
                    store.db.execute("SELECT count(*) FROM events").fetchone()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=("a",)), threading.Thread(target=write, args=("b",)),
               threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_store(workspace) as store:
        assert store.db["events"].count == 200


# --- housekeeping: class edits, deleting images, disk usage -------------------------------------------


@pytest.fixture
def small_project(store, synthetic_dataset: Path):
    """Two labelled images, one unlabelled with a reference mask, one pseudo mask in a run folder."""
    project = create_project(store, "small", synthetic_dataset / "classes.json")
    report = import_folder_dataset(store, project, synthetic_dataset, labeled=["labeled_000", "labeled_001"],
                                   unlabeled=["unlabeled_000"])
    assert len(report.added) == 3
    image = store.db.execute("SELECT id FROM images WHERE name = 'unlabeled_000'").fetchone()[0]
    pseudo = np.full((64, 64), 3, np.uint8)
    pseudo[:8] = 255
    pseudo[8:16] = 1
    write_mask(store.path("runs/1/pseudo/st/unlabeled_000.png"), pseudo, [[0, 0, 0]] * 4)
    with store.transaction() as db:
        run = db["runs"].insert({"project_id": project.id, "method": "st", "config": "{}", "status": "done",
                                 "run_dir": "runs/1", "created": "t"}).last_pk
        db["masks"].insert({"image_id": image, "kind": "pseudo", "run_id": run, "stage": "st",
                            "path": "runs/1/pseudo/st/unlabeled_000.png", "created": "t"})
    return project


def all_masks(store) -> dict[tuple[str, str], np.ndarray]:
    return {(row["name"], row["kind"]): read_mask(store.path(row["path"])) for row in store.db.query(
        "SELECT images.name, masks.kind, masks.path FROM masks JOIN images ON images.id = masks.image_id")}


def mask_paths(store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT path FROM masks")}


def test_merge_and_delete_classes_remap_every_stored_mask(store, small_project):
    before = all_masks(store)
    old_files = mask_paths(store)
    assert {v for m in before.values() for v in np.unique(m)} == {0, 1, 2, 3, 255}

    project = merge_classes(store, small_project, "red", "blue")  # 0 bg, 1 red, 2 green, 3 blue

    assert project.classes.names == ("background", "green", "blue")
    merged = np.array([0, 2, 1, 2] + [0] * 251 + [255], np.uint8)
    for key, mask in all_masks(store).items():
        np.testing.assert_array_equal(mask, merged[before[key]], err_msg=str(key))
    assert store.path("runs/1/pseudo/st/unlabeled_000.png").is_file()  # the run's own output is kept
    gone = {p for p in old_files - mask_paths(store) if p.startswith("masks/")}
    assert gone and not any(store.path(p).exists() for p in gone)

    project = delete_class(store, project, "background")

    assert project.classes.names == ("green", "blue") and project.classes.palette[0] == (30, 200, 30)
    deleted = np.array([255, 0, 1] + [0] * 252 + [255], np.uint8)
    for key, mask in all_masks(store).items():
        np.testing.assert_array_equal(mask, deleted[merged[before[key]]], err_msg=str(key))
    assert all(store.path(p).is_file() for p in mask_paths(store))


def test_a_failed_remap_changes_nothing(store, small_project, monkeypatch: pytest.MonkeyPatch):
    import stpp.store.class_edits as class_edits

    before, paths = all_masks(store), mask_paths(store)
    calls = []
    real = class_edits.store_mask

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(class_edits, "store_mask", failing)
    with pytest.raises(StoreError, match="No space left"):
        delete_class(store, small_project, "green")
    assert get_project(store, small_project.id).classes == small_project.classes
    assert mask_paths(store) == paths
    for key, mask in all_masks(store).items():
        np.testing.assert_array_equal(mask, before[key])


def test_class_edits_are_refused_while_a_run_is_active(store, small_project):
    with store.transaction() as db:
        db.execute("UPDATE runs SET status = 'running'")
    with pytest.raises(StoreError, match="while run 1 \\(running\\) is in progress"):
        merge_classes(store, small_project, "red", "green")
    assert get_project(store, small_project.id).classes == small_project.classes


def test_rename_recolour_and_add_classes(store, small_project):
    masks = all_masks(store)
    project = rename_class(store, small_project, "red", "crimson")
    project = recolour_class(store, project, "crimson", (250, 0, 0))
    project = add_class(store, project, "yellow")
    assert project.classes.names == ("background", "crimson", "green", "blue", "yellow")
    assert project.classes.palette[1] == (250, 0, 0) and len(set(project.classes.palette)) == 5
    with pytest.raises(StoreError, match="duplicate class names: green"):
        rename_class(store, project, "crimson", "green")
    with pytest.raises(StoreError, match="already the colour of class 'background'"):
        recolour_class(store, project, "green", (0, 0, 0))
    with pytest.raises(StoreError, match="no class named 'purple'"):
        merge_classes(store, project, "purple", "green")
    assert get_project(store, project.id).classes == project.classes
    for key, mask in all_masks(store).items():
        np.testing.assert_array_equal(mask, masks[key])  # values keep their meaning


def test_delete_images_keeps_files_other_rows_use(store, small_project):
    rows = {r["name"]: dict(r) for r in store.db.query("SELECT * FROM images")}
    shared = store.db.execute("SELECT path FROM masks WHERE image_id = ? AND kind = 'ground_truth'",
                              [rows["labeled_000"]["id"]]).fetchone()[0]
    with store.transaction() as db:  # another image's reviewed mask happens to be the same file
        db["masks"].insert({"image_id": rows["labeled_001"]["id"], "kind": "reviewed", "path": shared,
                            "created": "t"})

    assert delete_images(store, small_project, ["labeled_000"]) == 1

    assert not store.path(rows["labeled_000"]["path"]).exists()
    assert store.path(shared).is_file()
    assert all(store.path(p).is_file() for p in mask_paths(store))
    delete_images(store, small_project, [rows["labeled_001"]["id"]])
    assert not store.path(shared).exists()
    with pytest.raises(StoreError, match="no image 'nope'"):
        delete_images(store, small_project, ["unlabeled_000", "nope"])
    assert store.db["images"].count == 1  # refused as a whole


def test_disk_usage_counts_referenced_files_once_and_orphans_are_found(store, small_project):
    usage = disk_usage(store, small_project)
    images = sum(store.path(r[0]).stat().st_size for r in store.db.execute("SELECT path FROM images"))
    masks = sum(store.path(r[0]).stat().st_size for r in store.db.execute(
        "SELECT DISTINCT path FROM masks WHERE path LIKE 'masks/%'"))
    run = store.path("runs/1/pseudo/st/unlabeled_000.png").stat().st_size
    assert (usage.images, usage.masks, usage.runs, usage.in_place) == (images, masks, run, 0)
    assert usage.runs_by_id == {1: run} and usage.total == images + masks + run

    orphan = store.path(f"images/{small_project.id}/ab/orphan.png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a killed import")
    assert disk_usage(store, small_project) == usage
    assert find_orphan_files(store) == [f"images/{small_project.id}/ab/orphan.png"]
    assert remove_orphan_files(store) == 0  # too young: may belong to an import still running
    assert remove_orphan_files(store, min_age_s=0) == 1 and not orphan.exists()
