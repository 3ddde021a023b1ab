"""Reading a project's images: by role, by page, by name, with their given masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stpp.store.db import Store, StoreError
from stpp.store.projects import Project


@dataclass(frozen=True)
class ImageFiles:
    """One image row and its latest mask of one kind.

    Attributes:
        path / mask_path: workspace-relative, or absolute for files registered in place.
        role: ``labelled``, ``unlabelled`` or ``validation``.
    """

    id: int
    name: str
    path: str
    hash: str
    width: int
    height: int
    role: str
    mask_path: str | None = None
    mask_hash: str | None = None


_WITH_MASK = ("SELECT i.id, i.name, i.path, i.hash, i.width, i.height, i.role, m.path AS mask_path, "
              "m.hash AS mask_hash FROM images i LEFT JOIN masks m ON m.id = "
              "(SELECT max(id) FROM masks WHERE image_id = i.id AND kind = ?) WHERE i.project_id = ?")


def count_images(store: Store, project: Project, role: str) -> int:
    """How many images the project has in ``role``."""
    return store.db.execute("SELECT count(*) FROM images WHERE project_id = ? AND role = ?",
                            [project.id, role]).fetchone()[0]


def count_labelled_with_masks(store: Store, project: Project) -> int:
    """How many labelled images of the project have a ground-truth mask (what a teacher trains on)."""
    return store.db.execute(
        "SELECT count(*) FROM images i JOIN masks m ON m.image_id = i.id AND m.kind = 'ground_truth' "
        "WHERE i.project_id = ? AND i.role = 'labelled'", [project.id]).fetchone()[0]


def images_page(store: Store, project: Project, role: str, offset: int, limit: int,
                mask_kind: str = "ground_truth") -> list[ImageFiles]:
    """Images of ``role`` by name, ``limit`` of them from ``offset``, each with its latest ``mask_kind`` mask."""
    rows = store.db.query(_WITH_MASK + " AND i.role = ? ORDER BY i.name LIMIT ? OFFSET ?",
                          [mask_kind, project.id, role, int(limit), int(offset)])
    return [ImageFiles(**row) for row in rows]


def images_with_masks(store: Store, project: Project, mask_kind: str = "ground_truth") -> list[ImageFiles]:
    """Every image of the project by name, each with its latest ``mask_kind`` mask (or none)."""
    return [ImageFiles(**row) for row in store.db.query(_WITH_MASK + " ORDER BY i.name", [mask_kind, project.id])]


def mean_image_pixels(store: Store, project: Project) -> float:
    """The mean width x height of the project's images (1 for a project without images)."""
    row = store.db.execute("SELECT avg(width * height) FROM images WHERE project_id = ?", [project.id]).fetchone()
    return float(row[0] or 1.0)


def image_ids_by_name(store: Store, project: Project) -> dict[str, int]:
    """Image name to image row id, for every image of the project."""
    return {name: image_id for image_id, name in
            store.db.execute("SELECT id, name FROM images WHERE project_id = ?", [project.id])}


def get_image(store: Store, project: Project, image: int | str) -> dict[str, Any]:
    """The image row with this id (int) or name (str) in the project.

    Raises:
        StoreError: the project has no such image.
    """
    column = "id" if isinstance(image, int) else "name"
    rows = list(store.db.query(f"SELECT * FROM images WHERE project_id = ? AND {column} = ?", [project.id, image]))
    if not rows:
        raise StoreError(f"project {project.name!r} has no image {image!r}")
    return rows[0]


def image_paths_by_name(store: Store, project: Project) -> dict[str, str]:
    """Image name to its file (workspace-relative, or absolute when registered in place)."""
    return {name: path for name, path in
            store.db.execute("SELECT name, path FROM images WHERE project_id = ?", [project.id])}
