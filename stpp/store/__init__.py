"""The project store: one SQLite file (through sqlite-utils) plus image and mask files in the workspace.

The app, the CLI and the training worker all go through these functions; see ``db`` for the file
and transactions, ``migrations`` for the schema, ``projects`` for projects, ``ingest`` for adding
images and masks (``sources``, ``pairing`` and ``decode`` are its steps), ``voc`` for labels made
elsewhere, ``class_edits`` for changing classes, and ``housekeeping`` for deletion and disk usage.
Nothing here imports torch.
"""

from stpp.store.class_edits import add_class, delete_class, merge_classes, recolour_class, rename_class
from stpp.store.classes import ClassInfo, as_class_info, load_classes, load_labelmap, make_classes, parse_class_names
from stpp.store.db import Store, StoreError, open_store, utc_now
from stpp.store.demo import DEMO_PROJECT, seed_demo_project
from stpp.store.housekeeping import (
                                     DiskUsage,
                                     delete_images,
                                     delete_run,
                                     disk_usage,
                                     find_orphan_files,
                                     prune_run_checkpoints,
                                     remove_orphan_files,
                                     remove_unreferenced,
)
from stpp.store.ingest import import_folder_dataset, ingest_files, normalize_role
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
from stpp.store.report import FileResult, ImportReport
from stpp.store.sources import Limits
from stpp.store.voc import import_voc_labels, import_voc_project

__all__ = [
    "ClassInfo", "DEMO_PROJECT", "DiskUsage", "FileResult", "ImportReport", "Limits", "MASK_KINDS", "Project",
    "ProjectSummary", "ROLES", "RUN_STATUSES", "SCHEMA_VERSION", "Store", "StoreError", "add_class",
    "as_class_info", "create_project", "delete_class", "delete_images", "delete_project", "delete_run", "disk_usage",
    "find_orphan_files", "find_project", "get_project", "import_folder_dataset", "import_voc_labels",
    "import_voc_project", "ingest_files", "list_project_summaries", "list_projects", "load_classes",
    "load_labelmap", "make_classes", "merge_classes", "normalize_role", "open_store", "parse_class_names",
    "project_summary", "prune_run_checkpoints", "recolour_class", "remove_orphan_files", "remove_unreferenced", "rename_class",
    "seed_demo_project", "utc_now",
]
