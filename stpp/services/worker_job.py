"""A project run's order to its worker, composed from the store (see :mod:`stpp.core.handoff`).

The worker reads nothing else: the run's images per role with their files, the latest review
decisions on its unlabelled images, and where it pauses next all travel in ``job.json``.
"""

from __future__ import annotations

import json

from stpp.core.handoff import JobImage, WorkerJob
from stpp.services.review import next_pause, reviewed_inputs
from stpp.store.db import Store, StoreError
from stpp.store.images import images_with_masks, mean_image_pixels
from stpp.store.projects import get_project
from stpp.store.runs import Run, run_layout

ROLE_KEYS = {"labelled": "labeled", "unlabelled": "unlabeled", "validation": "val"}
"""Image role in the store to its key in a run's inputs (the headless run's words)."""


class JobInputError(StoreError):
    """The run cannot be handed to a worker as it stands (the message says why and what to do)."""


def compose_job(store: Store, run: Run, attempt: int) -> WorkerJob:
    """The ``job.json`` of the run's next start.

    Labelled images are those of role ``labelled`` with a ``ground_truth`` mask, validation images
    likewise; unlabelled images never carry a mask (their ``reference`` masks are for measuring
    only). A run that already started (its folder has ``inputs.json``) keeps the images it started
    with: images added since are left out.

    Raises:
        JobInputError: no labelled image with a mask, or images the run started with are gone.
        ReviewError: an accepted or corrected image whose reviewed mask is missing.
    """
    project = get_project(store, run.project_id)
    images: dict[str, dict[str, JobImage]] = {key: {} for key in ROLE_KEYS.values()}
    for row in images_with_masks(store, project, "ground_truth"):
        key = ROLE_KEYS[row.role]
        if key == "unlabeled":
            images[key][row.name] = JobImage(row.name, str(store.path(row.path)))
        elif row.mask_path:
            images[key][row.name] = JobImage(row.name, str(store.path(row.path)), str(store.path(row.mask_path)))
    layout = run_layout(store, run)
    if layout.inputs_path.exists():
        started_with = json.loads(layout.inputs_path.read_text())
        missing = [name for key in images for name in started_with.get(key, []) if name not in images[key]]
        if missing:
            raise JobInputError(f"{len(missing)} image(s) run {run.id} started with are no longer in the project "
                                f"(or changed role): {', '.join(missing[:5])}; start a new run instead")
        images = {key: {name: images[key][name] for name in started_with.get(key, [])} for key in images}
    if not images["labeled"]:
        raise JobInputError(f"project {project.name!r} has no labelled images with masks")
    reviewed, rejected = reviewed_inputs(store, project, list(images["unlabeled"]))
    return WorkerJob(
        run_id=run.id, attempt=attempt, config=run.config,
        labeled=tuple(images["labeled"].values()), unlabeled=tuple(images["unlabeled"].values()),
        val=tuple(images["val"].values()),
        reviewed=tuple(JobImage(name, str(image), str(mask)) for name, image, mask in reviewed),
        rejected=tuple(sorted(rejected)),
        inputs={"project_id": project.id, **{key: list(images[key]) for key in images}},
        pause=next_pause(store, run.id), start_progress=run.progress,
        pixels_per_image=mean_image_pixels(store, project))
