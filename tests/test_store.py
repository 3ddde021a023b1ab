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
from PIL import Image

from stpp.data.masks import read_mask
from stpp.store import (
    SCHEMA_VERSION,
    StoreError,
    create_project,
    delete_project,
    get_project,
    import_folder_dataset,
    list_project_summaries,
    load_classes,
    open_store,
    project_summary,
    seed_demo_project,
)

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
    assert {"run_id", "time", "stage", "step", "total", "loss", "miou", "message"} <= columns["events"]
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


def test_malformed_classes_json_names_the_line(tmp_path: Path):
    path = tmp_path / "classes.json"
    path.write_text('{\n  "classes": ["a", "b"],\n  "palette": [[0, 0, 0]] oops\n}\n')
    with pytest.raises(StoreError, match=r"classes.json:3:"):
        load_classes(path)
    path.write_text('{"classes": []}')
    with pytest.raises(StoreError, match="empty"):
        load_classes(path)


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
    assert "[7]" in reasons["labeled_002"]
    assert "needs a mask" in reasons["val_000"]
    assert "no image named" in reasons["missing_id"]
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
