"""How fast a review gallery page opens on a large project: ``python -m stpp.bench gallery [--images N]``.

Generates a throw-away workspace with one project of N unlabelled images (240x180, like the demo,
added through the store's own import), a ranked run and its pseudo masks, then times :func:`stpp.services.gallery.gallery_page` for the first
page (thumbnails made), the same page again (thumbnails cached), a page deep in the ranking and a
class-filtered page (first: the class index is built; then cached). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from stpp.core.config import DataConfig, StppConfig
from stpp.core.layout import RunLayout
from stpp.core.masks import write_mask
from stpp.services.gallery import GalleryQuery, gallery_page
from stpp.store import create_project, ingest_files, open_store
from stpp.store.images import image_ids_by_name
from stpp.store.runs import create_run, record_pseudo_masks, record_scores

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
    layout = RunLayout(store.path(run.run_dir))
    sources = root / "images"
    sources.mkdir()
    base = rng.integers(0, 255, size=(180, 240, 3), dtype=np.uint8)
    names = [f"img_{index:05d}" for index in range(count)]
    for index, name in enumerate(names):
        pixels = np.roll(base, index, axis=1)
        # An 8x8 block (one JPEG block, kept through compression) per byte of the index: the import skips
        # files of the same content.
        pixels[:8, :8], pixels[:8, 8:16] = index % 256, index // 256
        Image.fromarray(pixels).save(sources / f"{name}.jpg", quality=85)
        mask = np.zeros((180, 240), dtype=np.uint8)
        mask[:, : 60 + index % 120] = 1 + index % 3
        write_mask(layout.pseudo_dir("teacher") / f"{name}.png", mask, PALETTE)
    ingest_files(store, project, [sources], "unlabelled")
    image_ids = image_ids_by_name(store, project)
    if len(image_ids) != count:
        raise RuntimeError(f"only {len(image_ids)} of the {count} bench images were imported")
    stability = np.sort(rng.random(count))[::-1]
    layout.scores_path.write_text("id,stability,reliable,rank\n" + "".join(
        f"{name},{stability[rank - 1]:.6f},{int(rank <= count // 2)},{rank}\n"
        for rank, name in enumerate(names, start=1)))
    record_scores(store, run.id, layout.scores_path, image_ids)
    record_pseudo_masks(store, run.id, "teacher", layout.pseudo_dir("teacher"), image_ids)
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
    parser = argparse.ArgumentParser(prog="python -m stpp.bench gallery", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        workspace, run_id = make_workspace(Path(tmp), args.images)
        setup = time.perf_counter() - start
        timings = time_pages(workspace, run_id)
    print(json.dumps({"images": args.images, "setup_s": round(setup, 1), "seconds": timings}))
    return 0
