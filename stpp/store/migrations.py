"""The store's schema, as a list of forward migrations.

``MIGRATIONS[n - 1]`` takes a database from schema version ``n - 1`` to ``n``; the version lives in
SQLite's ``PRAGMA user_version``. Never edit a released migration: append a new one. Times are ISO
8601 UTC strings; JSON columns hold text; paths of stored files are relative to the workspace.
"""

from __future__ import annotations

import json
from typing import Callable

import sqlite_utils

from stpp.core.config import METHODS

ROLES = ("labelled", "unlabelled", "validation")
MASK_KINDS = ("ground_truth", "reference", "pseudo", "reviewed")
RUN_STATUSES = ("queued", "running", "awaiting_review", "done", "failed", "cancelled")
DECISIONS = ("accepted", "rejected", "corrected")


def _check(column: str, values: tuple[str, ...]) -> str:
    return f"CHECK ({column} IN ({', '.join(repr(v) for v in values)}))"


V1 = f"""
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    classes TEXT NOT NULL,                 -- JSON list of class names, index = class value
    palette TEXT NOT NULL,                 -- JSON list of [r, g, b], one per class
    ignore_index INTEGER NOT NULL DEFAULT 255,
    created TEXT NOT NULL
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,                    -- original file stem, unique per project
    hash TEXT NOT NULL,                    -- sha1 of the original file's bytes
    path TEXT NOT NULL,                    -- relative to the workspace, or absolute when in_place
    in_place INTEGER NOT NULL DEFAULT 0,   -- 1: registered in place, the file is not ours
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    role TEXT NOT NULL {_check("role", ROLES)},
    created TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX images_project_role ON images(project_id, role);
CREATE INDEX images_project_hash ON images(project_id, hash);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    method TEXT NOT NULL {_check("method", METHODS)},
    preset TEXT,
    config TEXT NOT NULL,                  -- the full resolved config, JSON
    config_hash TEXT,
    status TEXT NOT NULL DEFAULT 'queued' {_check("status", RUN_STATUSES)},
    resumable INTEGER NOT NULL DEFAULT 0,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,      -- 0..1 over the whole run
    pid INTEGER,
    heartbeat TEXT,
    error TEXT,
    run_dir TEXT,                          -- relative to the workspace
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT
);
CREATE INDEX runs_project ON runs(project_id);
CREATE TABLE masks (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind TEXT NOT NULL {_check("kind", MASK_KINDS)},
    run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
    stage TEXT,
    path TEXT NOT NULL,                    -- relative to the workspace
    hash TEXT,                             -- sha1 of the PNG file
    created TEXT NOT NULL
);
CREATE INDEX masks_image_kind ON masks(image_id, kind);
CREATE INDEX masks_run ON masks(run_id);
CREATE UNIQUE INDEX masks_one_given ON masks(image_id, kind) WHERE kind IN ('ground_truth', 'reference');
CREATE UNIQUE INDEX masks_one_pseudo ON masks(image_id, run_id, stage) WHERE kind = 'pseudo';
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    epoch INTEGER,
    path TEXT NOT NULL,                    -- relative to the workspace
    metrics TEXT,                          -- JSON
    created TEXT NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    time TEXT NOT NULL,
    stage TEXT,
    step INTEGER,
    total INTEGER,
    loss REAL,
    miou REAL,
    message TEXT
);
CREATE INDEX events_run ON events(run_id, id);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    stability REAL NOT NULL,
    reliable INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    checkpoint_miou TEXT,                  -- JSON list: meanIoU of each checkpoint's mask vs the last
    UNIQUE (run_id, image_id)
);
CREATE INDEX scores_image ON scores(image_id);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
    decision TEXT NOT NULL {_check("decision", DECISIONS)},
    mask_id INTEGER REFERENCES masks(id) ON DELETE SET NULL,
    time TEXT NOT NULL,
    user TEXT
);
CREATE INDEX reviews_image ON reviews(image_id, id);
CREATE INDEX reviews_project ON reviews(project_id, id);
"""


def _v1(db: sqlite_utils.Database) -> None:
    # executescript inside the caller's open transaction runs statement by statement (no commit).
    db.executescript(V1)


def _v2(db: sqlite_utils.Database) -> None:
    """Events get their own ``kind`` and ``data`` (JSON) columns; v1 packed the kind into ``message``."""
    # One statement at a time: executescript would commit the migration's transaction first.
    for statement in (
        "ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN data TEXT",  # JSON object: what the event carries beyond the columns
        # v1 wrote "kind: message", or the kind alone; a kind never contains ": ".
        "UPDATE events SET kind = CASE WHEN instr(message, ': ') > 0 "
        "THEN substr(message, 1, instr(message, ': ') - 1) ELSE coalesce(message, '') END, "
        "message = CASE WHEN instr(message, ': ') > 0 THEN substr(message, instr(message, ': ') + 2) ELSE '' END",
        "CREATE INDEX events_run_kind ON events(run_id, kind, id)",
    ):
        db.conn.execute(statement)


def _v3(db: sqlite_utils.Database) -> None:
    """Runs keep their review plan (where they pause for review) in a column; v2 kept it as the text of
    ``review_plan`` events (``"pause after: ranking, stage1"`` or ``"... none"``)."""
    # JSON list of pause points; NULL: launched without review.
    db.conn.execute("ALTER TABLE runs ADD COLUMN review_plan TEXT")
    latest = db.conn.execute(
        "SELECT run_id, message FROM events WHERE id IN (SELECT max(id) FROM events WHERE kind = 'review_plan' "
        "GROUP BY run_id)").fetchall()
    for run_id, message in latest:
        text = (message or "").removeprefix("pause after: ").strip()
        plan = [p.strip() for p in text.split(",") if p.strip() and p.strip() != "none"]
        db.conn.execute("UPDATE runs SET review_plan = ? WHERE id = ?", [json.dumps(plan), run_id])


def _v4(db: sqlite_utils.Database) -> None:
    """Runs record how their results reach the store: the worker writes only its run folder, and the
    app imports it (how far into ``events.jsonl``, which start of the run, which backend and job)."""
    for statement in (
        "ALTER TABLE runs ADD COLUMN events_read INTEGER NOT NULL DEFAULT 0",  # bytes of events.jsonl imported
        "ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",  # starts ordered (job.json's attempt)
        "ALTER TABLE runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local'",
        "ALTER TABLE runs ADD COLUMN job_id TEXT",  # the backend's handle of the current start (a Slurm job id)
    ):
        db.conn.execute(statement)


def _v5(db: sqlite_utils.Database) -> None:
    """Runs keep the backend settings they were launched with (a Slurm partition, time limit...)."""
    db.conn.execute("ALTER TABLE runs ADD COLUMN backend_options TEXT")  # JSON object; NULL: the backend's own


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes and understands."""
