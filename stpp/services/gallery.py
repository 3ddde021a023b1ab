"""What the review page shows, computed from the store and the run folder (numpy and Pillow only).

- :func:`gallery_page`: one page of a run's ranked unlabelled images, filtered and sorted in SQL,
  with thumbnails (the image with its shown mask blended in) cached on disk under
  ``WORKSPACE/cache/review/<run_id>/``; only the page's thumbnails are made, so a page of a
  10,000-image run costs what a page of a small one does.
- :func:`image_detail`: one image large: its shown mask, the K teacher checkpoints' single-scale
  masks read from the run's ``stability/ckpt<j>/`` (never predicted here) and the disagreement map.
- :func:`disagreement_map`, :func:`disagreement_image`: where the checkpoints disagree (the class
  colours themselves: :func:`stpp.core.masks.colorize` and :func:`~stpp.core.masks.overlay`).
- :func:`merge_painted_layer`: a painted editor layer (strokes, or the regions they outline) snapped to
  the palette and merged into a mask, optionally changing only the pixels of one class.

The *shown mask* of an image is its latest reviewed mask when a person accepted or corrected it,
else the run's pseudo mask of the latest stage that labelled it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from stpp.core.masks import atomic_save, overlay, read_image, read_mask
from stpp.core.method import num_reliable
from stpp.store.db import Store
from stpp.store.files import review_cache_relpath
from stpp.store.images import get_image
from stpp.store.projects import get_project
from stpp.store.ranking import RankedImage, count_ranked, count_ranked_images, image_score, ranked_images
from stpp.store.reviews import latest_decision
from stpp.store.runs import Run, current_pseudo_masks, get_run, run_layout

PAGE_SIZE = 50
THUMB_SIZE = 160
THUMB_OPACITY = 0.5
"""Gallery filters on the split (at the previewed ratio) and on the latest decision."""


@dataclass(frozen=True)
class GalleryQuery:
    """Which page of a run's ranking to show.

    Attributes:
        run_id: the run.
        page: 0-based page number (clamped to the last page).
        per_page: images per page.
        most_stable_first: rank 1 first, else the least stable first.
        show: one of :data:`stpp.store.ranking.RANK_FILTERS`.
        min_score / max_score: stability bounds (inclusive), None for open.
        class_index: only images whose shown mask contains this class.
        ratio: the reliable ratio R to preview (None: the run's).
    """

    run_id: int
    page: int = 0
    per_page: int = PAGE_SIZE
    most_stable_first: bool = True
    show: str = "all"
    min_score: float | None = None
    max_score: float | None = None
    class_index: int | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class GalleryItem:
    """One thumbnail of the gallery."""

    image_id: int
    name: str
    rank: int
    stability: float
    reliable: bool
    decision: str | None
    thumbnail: Path

    @property
    def caption(self) -> str:
        """``#3 · 0.912 · reliable · accepted``: rank, score, badge and decision."""
        parts = [f"#{self.rank}", f"{self.stability:.3f}", "reliable" if self.reliable else "unreliable"]
        return " · ".join(parts + ([self.decision] if self.decision else []))


@dataclass(frozen=True)
class GalleryPage:
    """A page of the gallery.

    Attributes:
        items: the page's images in display order.
        page / pages: this page (0-based) and the number of pages (at least 1).
        total: images matching the filter.
        ranked: images in the run's ranking (N).
        reliable: floor(N x R) at the previewed ratio.
        ratio: R.
    """

    items: list[GalleryItem]
    page: int
    pages: int
    total: int
    ranked: int
    reliable: int
    ratio: float


def gallery_page(store: Store, query: GalleryQuery) -> GalleryPage:
    """One page of the run's ranked images, with their thumbnails made (or taken from the cache).

    Raises:
        StoreError: no such run.
        ValueError: an unknown ``show`` filter.
    """
    run = get_run(store, query.run_id)
    ratio, ranked, cut = _split(store, run, query)
    per_page = max(1, int(query.per_page))
    if query.class_index is None:
        total = count_ranked_images(store, run.id, query.show, cut, query.min_score, query.max_score)
        page = _clamp(query.page, total, per_page)
        rows = _ranked(store, run.id, query, cut, limit=per_page, offset=page * per_page)
        shown = _shown_masks(store, run.id, rows)
    else:
        # Class presence is not in SQL: filter the ordered candidates by their shown masks (cached).
        rows, shown = _with_class(store, run.id, query, cut)
        total = len(rows)
        page = _clamp(query.page, total, per_page)
        rows = rows[page * per_page:(page + 1) * per_page]
    palette = get_project(store, run.project_id).classes.palette
    items = []
    for row in rows:
        mask = shown.get(row.image_id)
        thumb = thumbnail(store, run.id, row.image_id, store.path(row.path), store.path(mask) if mask else None,
                          palette)
        items.append(GalleryItem(row.image_id, row.name, row.rank, row.stability, row.rank <= cut, row.decision,
                                 thumb))
    return GalleryPage(items, page, max(1, math.ceil(total / per_page)), total, ranked, cut, ratio)


def _split(store: Store, run: Run, query: GalleryQuery) -> tuple[float, int, int]:
    """(R, N, floor(N x R)): the query's reliable ratio (the run's unless previewed), the ranked count, the cut."""
    ratio = run.cfg.selftrain.reliable_ratio if query.ratio is None else float(query.ratio)
    ranked = count_ranked(store, run.id)
    return ratio, ranked, num_reliable(ranked, ratio)


def _ranked(store: Store, run_id: int, query: GalleryQuery, cut: int, **page: int) -> list[RankedImage]:
    return ranked_images(store, run_id, query.show, cut, query.min_score, query.max_score, query.most_stable_first,
                         **page)


def _with_class(store: Store, run_id: int, query: GalleryQuery,
                cut: int) -> tuple[list[RankedImage], dict[int, str]]:
    """The query's rows whose shown mask holds ``query.class_index``, and the shown masks."""
    rows = _ranked(store, run_id, query, cut)
    shown = _shown_masks(store, run_id, rows)
    present = class_presence(store, run_id, [shown[row.image_id] for row in rows if row.image_id in shown])
    rows = [row for row in rows if row.image_id in shown and int(query.class_index) in present[shown[row.image_id]]]
    return rows, shown


def _clamp(page: int, total: int, per_page: int) -> int:
    return max(0, min(int(page), max(0, math.ceil(total / per_page) - 1)))


def _shown_masks(store: Store, run_id: int, rows: Sequence[RankedImage]) -> dict[int, str]:
    """image id -> workspace-relative path of its shown mask, for the rows of a gallery query."""
    pseudo = current_pseudo_masks(store, run_id, [row.image_id for row in rows if not row.review_mask])
    shown = {image_id: path for image_id, (_, path) in pseudo.items()}
    shown.update({row.image_id: row.review_mask for row in rows if row.review_mask})
    return shown


def review_cache(store: Store, run_id: int) -> Path:
    """``WORKSPACE/cache/review/<run_id>``: the run's thumbnails and class-presence index."""
    return store.path(review_cache_relpath(run_id))


def thumbnail(store: Store, run_id: int, image_id: int, image_path: Path, mask_path: Path | None,
              palette: Sequence[Sequence[int]], size: int = THUMB_SIZE) -> Path:
    """The cached JPEG thumbnail of an image with its mask blended in (made on first use).

    The file name holds a hash of the mask's path, and mask files are never rewritten in place
    (reviewed masks are content-named), so a new decision gives a new thumbnail.
    """
    key = hashlib.sha1(str(mask_path).encode()).hexdigest()[:12]
    target = review_cache(store, run_id) / "thumbs" / f"{int(image_id)}-{key}-{size}.jpg"
    if target.is_file():
        return target
    image = read_image(image_path)
    image.thumbnail((size, size), Image.BILINEAR)
    picture = np.asarray(image)
    if mask_path is not None and mask_path.is_file():
        small = Image.fromarray(read_mask(mask_path)).resize(image.size, Image.NEAREST)
        picture = overlay(picture, np.asarray(small), palette, THUMB_OPACITY)
    atomic_save(target, lambda tmp: Image.fromarray(picture).save(tmp, format="JPEG", quality=85))
    return target


def class_presence(store: Store, run_id: int, mask_paths: Sequence[str]) -> dict[str, frozenset[int]]:
    """Workspace-relative mask path -> the class indices it contains (cached in ``classes.json``)."""
    index_path = review_cache(store, run_id) / "classes.json"
    index: dict[str, list[int]] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    missing = [p for p in dict.fromkeys(mask_paths) if p not in index]
    for path in missing:
        index[path] = [int(v) for v in np.unique(read_mask(store.path(path)))]
    if missing:
        atomic_save(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index)))
    return {p: frozenset(index[p]) for p in mask_paths}


# Pictures ------------------------------------------------------------------------------------------


def disagreement_map(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel, how many earlier checkpoints' masks differ from the last one's (0 .. K-1).

    Args:
        masks: the K checkpoints' masks in checkpoint order, the final one last.
    """
    if len(masks) < 2:
        raise ValueError("a disagreement map needs masks from at least two checkpoints")
    final = np.asarray(masks[-1])
    counts = np.zeros(final.shape, dtype=np.uint8)
    for mask in masks[:-1]:
        counts += np.asarray(mask) != final
    return counts


def disagreement_image(image: np.ndarray, counts: np.ndarray, num_checkpoints: int) -> np.ndarray:
    """The image dimmed to grey with disagreeing pixels in yellow (one checkpoint) to red (all earlier ones)."""
    grey = np.asarray(image, dtype=np.float32)[..., :3].mean(axis=2, keepdims=True) * 0.5
    picture = np.repeat(grey, 3, axis=2)
    # 1 (yellow) .. all earlier checkpoints (red); with one earlier checkpoint, one is all.
    earlier = max(1, num_checkpoints - 1)
    hot = counts > 0
    level = np.clip(counts.astype(np.float32) - 1, 0, None) / (earlier - 1) if earlier > 1 else hot.astype(np.float32)
    colour = np.stack([np.full_like(level, 255.0), 230.0 * (1.0 - level), np.zeros_like(level)], axis=2)
    picture[hot] = colour[hot]
    return np.round(picture).astype(np.uint8)


# One image -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDetail:
    """Everything the review page shows about one image.

    Attributes:
        image: RGB (H, W, 3).
        mask: the shown mask; ``mask_source`` says which (``pseudo:<stage>``, ``accepted``, ``corrected``).
        checkpoint_masks: the K teacher checkpoints' single-scale masks (checkpoint order).
        disagreement: :func:`disagreement_map` of ``checkpoint_masks``.
        per_checkpoint: meanIoU of each earlier checkpoint's mask with the last one's.
    """

    image_id: int
    name: str
    rank: int | None
    stability: float | None
    reliable: bool | None
    decision: str | None
    image: np.ndarray = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    mask_source: str | None
    checkpoint_masks: list[np.ndarray] = field(repr=False)
    disagreement: np.ndarray | None = field(repr=False)
    per_checkpoint: tuple[float | None, ...] = ()


def image_detail(store: Store, run_id: int, image_id: int, ratio: float | None = None) -> ImageDetail:
    """One image of a run with its shown mask, checkpoint masks and disagreement map.

    Args:
        ratio: the reliable ratio to judge ``reliable`` by (None: the run's stored split).

    Raises:
        StoreError: no such run or image in the run's project.
    """
    run = get_run(store, run_id)
    image = get_image(store, get_project(store, run.project_id), int(image_id))
    score = image_score(store, run.id, image["id"])
    review = latest_decision(store, image["id"])
    decision = review.decision if review else None
    if review and review.mask_path and decision in ("accepted", "corrected"):
        mask_path, source = review.mask_path, decision
    else:
        stage, mask_path = current_pseudo_masks(store, run.id, [image["id"]]).get(image["id"], (None, None))
        source = f"pseudo:{stage}" if stage else None
    layout = run_layout(store, run)
    k = run.cfg.pseudo.num_checkpoints
    checkpoint_paths = [layout.stability_dir(j) / f"{image['name']}.png" for j in range(1, k + 1)]
    checkpoints = [read_mask(p) for p in checkpoint_paths] if all(p.is_file() for p in checkpoint_paths) else []
    reliable = None
    if score is not None:
        reliable = score.reliable if ratio is None else score.rank <= num_reliable(count_ranked(store, run.id), ratio)
    return ImageDetail(
        image_id=image["id"], name=image["name"], rank=score.rank if score else None,
        stability=score.stability if score else None, reliable=reliable, decision=decision,
        image=np.asarray(read_image(store.path(image["path"]))),
        mask=read_mask(store.path(mask_path)) if mask_path else None, mask_source=source,
        checkpoint_masks=checkpoints, disagreement=disagreement_map(checkpoints) if len(checkpoints) >= 2 else None,
        per_checkpoint=score.checkpoint_miou if score else ())


def gallery_page_ids(store: Store, query: GalleryQuery) -> list[int]:
    """The image ids of every image matching the query, in display order (no thumbnails made)."""
    run = get_run(store, query.run_id)
    cut = _split(store, run, query)[2]
    rows = _ranked(store, run.id, query, cut) if query.class_index is None else _with_class(store, run.id, query, cut)[0]
    return [row.image_id for row in rows]


# Corrections ---------------------------------------------------------------------------------------


UNPAINTED = 255
"""The class-map value of a pixel no stroke covers."""


def painted_classes(layer: np.ndarray, palette: Sequence[Sequence[int]], min_alpha: int = 128,
                    fill: bool = False) -> np.ndarray:
    """The class each pixel of a painted RGBA layer was painted with, :data:`UNPAINTED` elsewhere.

    A pixel counts as painted when its alpha is at least ``min_alpha`` (anti-aliased brush edges count
    only where they are mostly opaque) and takes the class whose palette colour is nearest to its
    colour. With ``fill``, each class's strokes are read as outlines: what they enclose takes their class
    too (gaps in an outline narrower than about 1 % of the layer's width are closed first).
    """
    layer = np.asarray(layer)
    if layer.ndim != 3 or layer.shape[2] != 4:
        raise ValueError(f"a painted layer must be RGBA (h, w, 4), not {layer.shape}")
    painted = layer[..., 3] >= min_alpha
    classes = np.full(layer.shape[:2], UNPAINTED, dtype=np.uint8)
    if not painted.any():
        return classes
    colours = layer[painted][:, :3].astype(np.int32)
    table = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    classes[painted] = ((colours[:, None, :] - table[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    if fill:
        strokes = classes.copy()
        gap = max(1, layer.shape[1] // 200)
        margin = 2 * gap  # room outside the layer, so that closing does not eat an outline drawn along its edge
        for index in np.unique(strokes[painted]):
            outline = ndimage.binary_closing(np.pad(strokes == index, margin), np.ones((3, 3), bool), iterations=gap)
            inside = ndimage.binary_fill_holes(outline)[margin:-margin, margin:-margin]
            classes[inside & (strokes == UNPAINTED)] = index
    return classes


def merge_painted_layer(mask: np.ndarray, layer: np.ndarray, palette: Sequence[Sequence[int]],
                        min_alpha: int = 128, fill: bool = False, only_class: int | None = None) -> np.ndarray:
    """Merge a painted RGBA layer into a class-index mask.

    The layer is read by :func:`painted_classes` (strokes, or with ``fill`` the regions they outline);
    every pixel it covers takes its painted class, the rest keep theirs. With ``only_class``, only pixels
    of that class change ("replace class A by class B inside the region"). A layer of another size (an
    editor canvas) is scaled to the mask's with nearest-neighbour sampling, after the fill, so that a thin
    outline on a large canvas still encloses its region.

    Args:
        mask: class indices (H, W).
        layer: RGBA (h, w, 4) uint8.
        palette: the class colours.
    """
    classes = painted_classes(layer, palette, min_alpha, fill)
    if classes.shape != mask.shape:
        classes = np.asarray(Image.fromarray(classes, "L").resize((mask.shape[1], mask.shape[0]), Image.NEAREST))
    change = classes != UNPAINTED
    if only_class is not None:
        change &= mask == only_class
    merged = np.array(mask, dtype=np.uint8, copy=True)
    merged[change] = classes[change]
    return merged
