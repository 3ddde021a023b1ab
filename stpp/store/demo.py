"""The demo project (``camvid-demo``), seeded from ``data/demo`` on the app's first start."""

from __future__ import annotations

from pathlib import Path

from stpp.store.db import Store, StoreError
from stpp.store.ingest import SPLIT_FILES, ImportReport, import_folder_dataset
from stpp.store.projects import Project, create_project, find_project, project_summary

DEMO_PROJECT = "camvid-demo"


def seed_demo_project(store: Store, demo_dir: str | Path, name: str = DEMO_PROJECT) -> Project:
    """Create the demo project from ``demo_dir`` unless it is already complete.

    Idempotent: when the project exists with every listed image, nothing is read or written; when
    an earlier seeding was interrupted, the missing images are added.

    Raises:
        StoreError: ``demo_dir`` is not a folder dataset, or some of its files fail to import.
    """
    demo_dir = Path(demo_dir)
    if not (demo_dir / "classes.json").is_file():
        raise StoreError(f"{demo_dir} has no classes.json; is the demo data missing?")
    listed = set()
    for file_name in SPLIT_FILES.values():
        path = demo_dir / file_name
        if path.is_file():
            listed.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    project = find_project(store, name)
    if project is not None and project_summary(store, project).total_images >= len(listed):
        return project
    if project is None:
        project = create_project(store, name, demo_dir / "classes.json")
    report: ImportReport = import_folder_dataset(store, project, demo_dir)
    if report.failed:
        raise StoreError(f"demo data did not import cleanly ({report.summary()}): {report.failed[0]}")
    return project
