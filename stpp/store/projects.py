"""Projects: create, look up, list with counts, delete (rows first, then the project's files)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from stpp.store.classes import ClassInfo, as_class_info
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.files import review_cache_relpath
from stpp.store.migrations import MASK_KINDS, ROLES

MAX_NAME_LENGTH = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
"""What a project name may be."""


@dataclass(frozen=True)
class Project:
    """One project row."""

    id: int
    name: str
    classes: ClassInfo
    created: str


@dataclass(frozen=True)
class ProjectSummary:
    """A project with its counts.

    Attributes:
        images: image count per role (``labelled``, ``unlabelled``, ``validation``), zeros included.
        masks: mask count per kind (``ground_truth``, ``reference``, ``pseudo``, ``reviewed``).
        runs: number of runs.
    """

    project: Project
    images: dict[str, int] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    runs: int = 0

    @property
    def name(self) -> str:
        """The project's name."""
        return self.project.name

    @property
    def total_images(self) -> int:
        """Images in all roles."""
        return sum(self.images.values())


def _project(row: dict[str, Any]) -> Project:
    classes = ClassInfo(tuple(json.loads(row["classes"])), tuple(tuple(c) for c in json.loads(row["palette"])),
                        row["ignore_index"])
    return Project(id=row["id"], name=row["name"], classes=classes, created=row["created"])


def validate_name(name: str) -> str:
    """A clean project name (stripped), or :class:`StoreError` saying what is wrong with it.

    A name is letters, digits, ``.``, ``_``, ``+`` and ``-``, starting with a letter or digit, so it is
    typed on the command line as it is written and is safe in file and folder names.
    """
    if not isinstance(name, str) or not name.strip():
        raise StoreError("a project needs a name")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise StoreError(f"project name is longer than {MAX_NAME_LENGTH} characters")
    if not NAME_PATTERN.fullmatch(name):
        suggestion = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-._+")
        raise StoreError(f"project name {name!r} may hold only letters, digits, '.', '_', '+' and '-' (starting "
                         f"with a letter or digit)" + (f", for example {suggestion!r}" if suggestion else ""))
    return name


def create_project(store: Store, name: str, classes: Any) -> Project:
    """Create an empty project.

    Args:
        store: the open store.
        name: unique project name.
        classes: a :class:`ClassInfo`, a ``classes.json`` or ``labelmap.txt`` path, the
            ``classes.json`` mapping, a list of names, or any object with ``names``/``classes``,
            ``palette`` and ``ignore_index`` attributes (see :func:`~stpp.store.classes.as_class_info`).

    Raises:
        StoreError: invalid name or classes, or a project of that name exists.
    """
    name = validate_name(name)
    info = as_class_info(classes)
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM projects WHERE name = ?", [name]).fetchone():
            raise StoreError(f"a project named {name!r} already exists")
        project_id = db["projects"].insert({
            "name": name,
            "classes": json.dumps(list(info.names)),
            "palette": json.dumps([list(c) for c in info.palette]),
            "ignore_index": info.ignore_index,
            "created": utc_now(),
        }).last_pk
    return get_project(store, project_id)


def find_project(store: Store, project: int | str) -> Project | None:
    """The project with this id (int) or name (str), or None."""
    column = "id" if isinstance(project, int) else "name"
    rows = list(store.db.query(f"SELECT * FROM projects WHERE {column} = ?", [project]))
    return _project(rows[0]) if rows else None


def get_project(store: Store, project: int | str | Project) -> Project:
    """The project with this id or name (a :class:`Project` is re-read).

    Raises:
        StoreError: no such project.
    """
    key = project.id if isinstance(project, Project) else project
    found = find_project(store, key)
    if found is None:
        raise StoreError(f"no project {key!r}")
    return found


def list_projects(store: Store) -> list[Project]:
    """Every project, by name."""
    return [_project(row) for row in store.db.query("SELECT * FROM projects ORDER BY name")]


def _counts(store: Store, sql: str, keys: tuple[str, ...], project_id: int | None) -> dict[int, dict[str, int]]:
    where = "" if project_id is None else "WHERE project_id = :pid"
    result: dict[int, dict[str, int]] = {}
    for row in store.db.query(sql.format(where=where), {"pid": project_id}):
        result.setdefault(row["project_id"], dict.fromkeys(keys, 0))[row["key"]] = row["n"]
    return result


_IMAGE_COUNTS = "SELECT project_id, role AS key, count(*) AS n FROM images {where} GROUP BY 1, 2"
_MASK_COUNTS = ("SELECT project_id, kind AS key, count(*) AS n FROM masks JOIN images ON images.id = masks.image_id "
                "{where} GROUP BY 1, 2")
_RUN_COUNTS = "SELECT project_id, 'runs' AS key, count(*) AS n FROM runs {where} GROUP BY 1"


def list_project_summaries(store: Store, project: int | str | Project | None = None) -> list[ProjectSummary]:
    """Projects with image counts per role, mask counts per kind and run counts, by name.

    Args:
        project: only this project (id, name or :class:`Project`); all projects when None.
    """
    projects = list_projects(store) if project is None else [get_project(store, project)]
    project_id = None if project is None else projects[0].id
    images = _counts(store, _IMAGE_COUNTS, ROLES, project_id)
    masks = _counts(store, _MASK_COUNTS, MASK_KINDS, project_id)
    runs = _counts(store, _RUN_COUNTS, ("runs",), project_id)
    return [
        ProjectSummary(
            project=p,
            images=images.get(p.id, dict.fromkeys(ROLES, 0)),
            masks=masks.get(p.id, dict.fromkeys(MASK_KINDS, 0)),
            runs=runs.get(p.id, {"runs": 0})["runs"],
        )
        for p in projects
    ]


def project_summary(store: Store, project: int | str | Project) -> ProjectSummary:
    """One project's :class:`ProjectSummary`."""
    return list_project_summaries(store, project)[0]


def delete_project(store: Store, project: int | str | Project) -> None:
    """Delete a project, its images, masks, runs, scores, reviews and events, then its files.

    Rows go first (one transaction), files after, so no row ever points at a missing file; files
    registered in place are never touched.
    """
    project = get_project(store, project)
    with store.transaction() as db:
        runs = list(db.query("SELECT id, run_dir FROM runs WHERE project_id = ?", [project.id]))
        db.execute("DELETE FROM projects WHERE id = ?", [project.id])
    for folder in [store.path("images") / str(project.id), store.path("masks") / str(project.id)]:
        shutil.rmtree(folder, ignore_errors=True)
    for run in runs:
        shutil.rmtree(store.path(review_cache_relpath(run["id"])), ignore_errors=True)
        run_dir = run["run_dir"]
        if run_dir and (store.path(run_dir)).resolve().is_relative_to(store.workspace.resolve() / "runs"):
            shutil.rmtree(store.path(run_dir), ignore_errors=True)
