"""How fast a review gallery page opens on a large project: ``python -m stpp.review.bench [--images N]``.

Generates a throw-away workspace with one project of N unlabelled images (240x180, like the demo),
a ranked run and its pseudo masks, then times :func:`stpp.review.views.gallery_page` for the first
page (thumbnails made), the same page again (thumbnails cached), a page deep in the ranking and a
class-filtered page (first: the class index is built; then cached). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from stpp.core.config import DataConfig, StppConfig
from stpp.core.masks import write_mask
from stpp.review.views import GalleryQuery, gallery_page
from stpp.store import create_project, open_store, utc_now
from stpp.store.runs import create_run

CLASSES = ["background", "red", "green", "blue"]
PALETTE = [[0, 0, 0], [220, 30, 30], [30, 200, 30], [40, 60, 230]]


def make_workspace(root: Path, count: int, seed: int = 0) -> tuple[Path, int]:
    """A workspace with ``count`` ranked unlabelled images and their pseudo masks; returns it and the run id."""
    rng = np.random.default_rng(seed)
    store = open_store(root / "workspace")
    project = create_project(store, "bench", {"classes": CLASSES, "palette": PALETTE, "ignore_index": 255})
    cfg = replace(StppConfig.from_dict({"method": "st++", "preset": "test"}),
                  data=DataConfig(len(CLASSES), tuple(CLASSES), tuple(map(tuple, PALETTE)), 255))
    run = create_run(store, project, cfg)
    images, masks, scores = [], [], []
    base = rng.integers(0, 255, size=(180, 240, 3), dtype=np.uint8)
    for index in range(count):
        name = f"img_{index:05d}"
        image_rel = f"images/{project.id}/{name}.jpg"
        store.path(image_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, index, axis=1)).save(store.path(image_rel), quality=85)
        mask = np.zeros((180, 240), dtype=np.uint8)
        mask[:, : 60 + index % 120] = 1 + index % 3
        mask_rel = f"runs/{run.id}/pseudo/teacher/{name}.png"
        write_mask(store.path(mask_rel), mask, PALETTE)
        images.append({"id": index + 1, "project_id": project.id, "name": name, "hash": f"{index:040x}",
                       "path": image_rel, "width": 240, "height": 180, "role": "unlabelled", "created": utc_now()})
        masks.append({"image_id": index + 1, "kind": "pseudo", "run_id": run.id, "stage": "teacher", "path": mask_rel,
                      "created": utc_now()})
    stability = np.sort(rng.random(count))[::-1]
    scores = [{"run_id": run.id, "image_id": i + 1, "stability": float(stability[i]), "reliable": int(i < count // 2),
               "rank": i + 1, "checkpoint_miou": "[]"} for i in range(count)]
    with store.transaction() as db:
        db["images"].insert_all(images)
        db["masks"].insert_all(masks)
        db["scores"].insert_all(scores)
    store.close()
    return root / "workspace", run.id


def time_pages(workspace: Path, run_id: int) -> dict[str, float]:
    """Seconds per gallery page: cold, warm, deep and class-filtered (cold and warm)."""
    store = open_store(workspace)
    timings = {}
    for label, query in (("first_page_cold", GalleryQuery(run_id)), ("first_page_warm", GalleryQuery(run_id)),
                         ("page_20_cold", GalleryQuery(run_id, page=20)),
                         ("class_filter_cold", GalleryQuery(run_id, class_index=2)),
                         ("class_filter_warm", GalleryQuery(run_id, class_index=2, page=1))):
        start = time.perf_counter()
        page = gallery_page(store, query)
        timings[label] = round(time.perf_counter() - start, 3)
        assert len(page.items) == 50
    store.close()
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.review.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        workspace, run_id = make_workspace(Path(tmp), args.images)
        setup = time.perf_counter() - start
        timings = time_pages(workspace, run_id)
    print(json.dumps({"images": args.images, "setup_s": round(setup, 1), "seconds": timings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
