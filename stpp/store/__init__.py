"""The project store: one SQLite file (through sqlite-utils) plus image and mask files in the workspace.

The app, the CLI and the training worker all go through these functions; see ``db`` for the file
and transactions, ``migrations`` for the schema, ``projects`` and ``ingest`` for what is built on it.
"""

from stpp.store.classes import ClassInfo, as_class_info, load_classes, make_classes
from stpp.store.db import Store, StoreError, open_store, utc_now
from stpp.store.demo import DEMO_PROJECT, seed_demo_project
from stpp.store.ingest import import_folder_dataset, ingest_files, normalize_role
from stpp.store.report import FileResult, ImportReport
from stpp.store.sources import Limits
from stpp.store.migrations import MASK_KINDS, ROLES, RUN_STATUSES, SCHEMA_VERSION
from stpp.store.projects import (
    Project,
    ProjectSummary,
    create_project,
    delete_project,
    find_project,
    get_project,
    list_project_summaries,
    list_projects,
    project_summary,
)

__all__ = [
    "ClassInfo", "DEMO_PROJECT", "FileResult", "ImportReport", "MASK_KINDS", "Project", "ProjectSummary",
    "ROLES", "RUN_STATUSES", "SCHEMA_VERSION", "Store", "StoreError", "as_class_info", "create_project",
    "delete_project", "find_project", "get_project", "import_folder_dataset", "list_project_summaries",
    "list_projects", "load_classes", "make_classes", "open_store", "project_summary", "seed_demo_project",
    "utc_now",
]
