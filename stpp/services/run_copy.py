"""Import a run folder made elsewhere (another machine, a headless ``python -m stpp run``) as a project run.

The folder is checked against the project (its classes, and every image its scores and pseudo masks
name), copied into the workspace as ``runs/<id>`` and imported the way every run's results reach the
store (:mod:`stpp.services.run_import`): its events from the start, then what its files hold. The
imported run ended before it arrived: ``done`` when it finished, else ``failed`` or ``cancelled``,
and never resumable here (its inputs are another machine's files).

No torch here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from stpp.core.config import ConfigError, StppConfig
from stpp.core.events import Event
from stpp.core.handoff import STOP_NAME, read_status
from stpp.core.layout import RunLayout
from stpp.core.runlock import LOCK_NAME
from stpp.services.run_import import import_events, project_image_ids, sync_run_outputs
from stpp.store.db import Store, StoreError
from stpp.store.housekeeping import delete_run
from stpp.store.projects import Project, get_project
from stpp.store.runs import Run, count_rows, get_run, record_event, record_imported_run, run_layout

MISSING_SHOWN = 5
"""How many missing image names an error message lists."""


class RunCopyError(StoreError):
    """A folder that cannot be imported as a run of the project (the message says why)."""


@dataclass(frozen=True)
class RunCopyReport:
    """What :func:`import_run_copy` recorded."""

    run: Run
    events: int
    scores: int
    pseudo_masks: int


def import_run_copy(store: Store, project: int | str | Project, source: str | Path) -> RunCopyReport:
    """Copy the run folder ``source`` into the workspace as a new run of ``project`` and import it.

    Raises:
        RunCopyError: not a run folder, a config this stpp cannot read, classes other than the
            project's, or images the project does not hold; nothing is recorded then.
    """
    project = get_project(store, project)
    source = Path(source)
    layout = RunLayout(source)
    cfg = _checked_config(layout, project)
    _check_images(layout, set(project_image_ids(store, project)))
    status, error = _ended_as(layout)

    copying = store.path("runs") / f".import-{os.getpid()}-{source.name}"
    shutil.rmtree(copying, ignore_errors=True)
    shutil.copytree(source, copying, ignore=shutil.ignore_patterns(LOCK_NAME, STOP_NAME, "*.tmp"))
    try:
        run = record_imported_run(store, project, cfg, status, error=error)
        target = run_layout(store, run).root
        if target.exists():
            delete_run(store, run.id)
            raise RunCopyError(f"{target} exists already; move it away and import again")
        os.replace(copying, target)
    finally:
        shutil.rmtree(copying, ignore_errors=True)
    record_event(store, run.id, Event("info", message=f"imported from {source.absolute()}"))
    events = import_events(store, run)
    sync_run_outputs(store, get_run(store, run.id))
    return RunCopyReport(get_run(store, run.id), events, count_rows(store, "scores", run.id),
                         count_rows(store, "masks", run.id, kind="pseudo"))


def _checked_config(layout: RunLayout, project: Project) -> StppConfig:
    if not layout.root.is_dir():
        raise RunCopyError(f"{layout.root}: no such folder")
    if not layout.config_path.is_file() or not layout.events_path.is_file():
        raise RunCopyError(f"{layout.root} is not a run folder: it needs config.json and events.jsonl "
                           "(what 'python -m stpp run --out' or a project run's worker writes)")
    try:
        cfg = StppConfig.from_dict(json.loads(layout.config_path.read_text()))
    except (OSError, ValueError, TypeError, ConfigError) as error:
        raise RunCopyError(f"{layout.config_path}: not a config this stpp reads: {error}") from None
    if tuple(cfg.data.class_names) != tuple(project.classes.names):
        raise RunCopyError(f"the run trained classes {', '.join(cfg.data.class_names)}; project {project.name!r} "
                           f"has {', '.join(project.classes.names)}")
    return cfg


def _check_images(layout: RunLayout, known: set[str]) -> None:
    """Every image the folder's scores and pseudo masks name must be one of the project's."""
    named: set[str] = set()
    if layout.scores_path.is_file():
        named |= {line.split(",", 1)[0] for line in layout.scores_path.read_text().splitlines()[1:] if line}
    pseudo = layout.root / "pseudo"
    if pseudo.is_dir():
        named |= {path.stem for path in pseudo.glob("*/*.png")}
    missing = sorted(named - known)
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (f" and {len(missing) - MISSING_SHOWN} more"
                                                      if len(missing) > MISSING_SHOWN else "")
        raise RunCopyError(f"the run names {len(missing)} image(s) the project does not hold: {shown}; "
                           "import them into the project first")


def _ended_as(layout: RunLayout) -> tuple[str, str | None]:
    """The imported run's status and error, from the worker's status file, else from its events."""
    status = read_status(layout.root)
    if status is not None and status.state in ("done", "cancelled"):
        return status.state, None
    if status is not None and status.state == "failed":
        return "failed", status.error or "failed where it ran"
    kinds = set()
    for line in layout.events_path.read_text(errors="replace").splitlines():
        try:
            kinds.add(json.loads(line).get("kind"))
        except (ValueError, AttributeError):
            continue
    if "run_end" in kinds:
        return "done", None
    where = f"it was {status.state}" if status is not None else "it had not finished"
    return "failed", f"imported unfinished ({where} when it was copied); it cannot continue here"
