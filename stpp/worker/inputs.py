"""A project run's inputs from the store: its images per role, and the review decisions on them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stpp.core.classes import ClassInfo
from stpp.headless import RunError
from stpp.selftrain.pipeline import RunData, Sample
from stpp.services.review import reviewed_inputs
from stpp.store.db import Store
from stpp.store.images import images_with_masks
from stpp.store.projects import Project


def build_run_data(store: Store, project: Project,
                   frozen: dict[str, Any] | None = None) -> tuple[RunData, dict[str, int]]:
    """The run's images from the store, and image name to image row id.

    Args:
        store: the open store.
        project: the run's project.
        frozen: the ``inputs.json`` of a run that already started: its image lists are used again
            (images added since are left out), so a resumed run trains on what it started with.

    Raises:
        RunError: no labelled image with a mask, or images of a started run are gone.
    """
    rows = images_with_masks(store, project, "ground_truth")
    samples: dict[str, dict[str, Sample]] = {"labeled": {}, "unlabeled": {}, "val": {}}
    for row in rows:
        image = store.path(row.path)
        if row.role == "labelled" and row.mask_path:
            samples["labeled"][row.name] = Sample(row.name, image, store.path(row.mask_path))
        elif row.role == "validation" and row.mask_path:
            samples["val"][row.name] = Sample(row.name, image, store.path(row.mask_path))
        elif row.role == "unlabelled":
            # Never a mask here: an unlabelled image's reference mask is for measuring only.
            samples["unlabeled"][row.name] = Sample(row.name, image)
    if frozen is not None:
        missing = [name for key in samples for name in frozen.get(key, []) if name not in samples[key]]
        if missing:
            raise RunError(f"{len(missing)} image(s) this run started with are no longer in the project "
                           f"(or changed role): {', '.join(missing[:5])}; start a new run instead")
        samples = {key: {name: samples[key][name] for name in frozen.get(key, [])} for key in samples}
    if not samples["labeled"]:
        raise RunError(f"project {project.name!r} has no labelled images with masks")
    classes = ClassInfo(tuple(project.classes.names), tuple(tuple(c) for c in project.classes.palette),
                        project.classes.ignore_index)
    data = RunData(classes=classes, labeled=tuple(samples["labeled"].values()),
                   unlabeled=tuple(samples["unlabeled"].values()), val=tuple(samples["val"].values()))
    return data, {row.name: row.id for row in rows}


def with_reviews(store: Store, project: Project, data: RunData) -> RunData:
    """``data`` with the project's latest review decisions on its unlabelled images.

    Accepted images train with the pseudo mask that was accepted, corrected ones with the
    corrected mask (both as labelled images, weak augmentation only, never re-labelled); rejected
    images leave the run's later stages.
    """
    reviewed, rejected = reviewed_inputs(store, project, [s.id for s in data.unlabeled])
    return replace(data, reviewed=tuple(Sample(name, image, mask) for name, image, mask in reviewed),
                   rejected=rejected)


def describe_project_inputs(project: Project, data: RunData) -> dict[str, Any]:
    """The run's ``inputs.json``: the project and the image names per role."""
    return {"project_id": project.id, "labeled": [s.id for s in data.labeled],
            "unlabeled": [s.id for s in data.unlabeled], "val": [s.id for s in data.val]}
