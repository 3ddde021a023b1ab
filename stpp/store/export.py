"""Dataset export: a project's images with the chosen mask of each, as one zip file.

Which mask an image gets:

- an image with a ``ground_truth`` mask (labelled and validation images): that mask;
- an unlabelled image whose latest review (per project, by review id) is ``rejected``: left out;
  ``corrected``: the reviewed mask of that review; ``accepted``: the pseudo mask that was accepted
  (the review's mask, else that run's pseudo mask);
- else, with ``include_reference=True``, its ``reference`` mask (never otherwise: reference masks
  only measure pseudo-mask quality);
- else the chosen run's pseudo mask: for each image the one of the latest stage up to ``stage``
  (``teacher`` < ``st`` < ``stage1`` < ``stage2`` < ``stage3``), i.e. the labels the next stage trained on.

:class:`ExportFilter` then keeps or drops groups of images. Validation images go to the ``val``
split, every other image to ``train``.

Every zip holds, beside the format's files:

- ``manifest.json``: project, classes, run, stage, model checkpoint, config hash, filter, counts;
- ``scores.csv``: the run's stability scores, ``id,stability,reliable,rank,ckpt<j>_miou...`` (the
  run folder's format; only the header when no run is chosen);
- ``images.csv``: every exported image with its split and the source of its mask.

Formats (images are JPEGs named ``NAME.jpg`` after the image's original stem; an upright RGB JPEG
input keeps its original bytes, anything else - EXIF-rotated JPEGs included - is stored upright at
quality 95, so image and mask line up in any reader):

- ``voc``: ``VOCdevkit/VOC2012/{JPEGImages/NAME.jpg, SegmentationClass/NAME.png (palette PNG,
  value = class index, 255 = ignore), ImageSets/Segmentation/{train,val,trainval}.txt, labelmap.txt}``
  (``val.txt`` only when validation images are exported). Unzip into a folder ``DIR`` and read it
  with ``torchvision.datasets.VOCSegmentation(root=DIR, year="2012", image_set="train")`` (or
  ``"val"``, ``"trainval"``); targets are palette PNGs whose ``np.array`` is the class index mask.
  Tools that expect the VOC layout at the top of the archive (CVAT's "Segmentation mask 1.1"
  import) take the content of ``VOCdevkit/VOC2012/``.
- ``coco``: ``images/NAME.jpg`` and ``annotations/instances_train.json`` (and
  ``instances_val.json``): one compressed-RLE annotation per class present in an image, category id
  = class index + 1; ``pycocotools.coco.COCO(path).annToMask(ann)`` gives that class's pixels.
- ``masks``: ``images/NAME.jpg`` and ``masks/CLASS/NAME.png`` (0 / 255) for every class.
- ``overlays``: ``overlays/NAME.jpg``, the image blended with its mask's class colours.

The zip is written to a temporary file beside ``out_zip`` and renamed over it at the end, one image
at a time: after a failure there is no partial zip (an older file of that name is left as it was).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from stpp import __version__
from stpp.core.masks import atomic_save, read_mask
from stpp.core.method import stage_order
from stpp.store.db import Store, StoreError, utc_now
from stpp.store.export_formats import FORMATS, VOC_ROOT, ExportImage, upright_jpeg
from stpp.store.projects import Project, get_project
from stpp.store.runs import run_stages

"""Stages in the order their models label images; a later stage's pseudo mask supersedes an earlier one."""
SOURCES = ("ground_truth", "reference", "accepted", "corrected", "pseudo")
EXPORTABLE = ("done", "awaiting_review")
"""Run statuses whose pseudo masks export without ``allow_unfinished`` (a paused run's are what review sees)."""

ProgressFn = Callable[[int, int], None]


class ExportError(StoreError):
    """An export that cannot be written as asked (the message names the image or file at fault)."""


@dataclass(frozen=True)
class ExportFilter:
    """Which groups of images an export keeps (all of them by default).

    Attributes:
        ground_truth: images with a ground-truth mask (labelled and validation images).
        accepted: unlabelled images whose latest review accepted the pseudo mask.
        corrected: unlabelled images whose latest review corrected the mask.
        reliable: unreviewed pseudo-labelled images the run ranked reliable.
        unreliable: unreviewed pseudo-labelled images the run ranked unreliable. Pseudo-labelled
            images without a score are kept only when both ``reliable`` and ``unreliable`` are set
            and there is no ``min_stability``.
        min_stability: keep unreviewed pseudo-labelled images only with a stability of at least this.
    """

    ground_truth: bool = True
    accepted: bool = True
    corrected: bool = True
    reliable: bool = True
    unreliable: bool = True
    min_stability: float | None = None


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote.

    Attributes:
        path: the zip file.
        fmt: the format.
        exported: number of images in the zip.
        counts: the manifest's counts (per split, per mask source, per pseudo stage, left out per reason).
        left_out: (image name, reason) for every project image not exported.
        manifest: the content of ``manifest.json``.
    """

    path: Path
    fmt: str
    exported: int
    counts: dict[str, Any]
    left_out: tuple[tuple[str, str], ...]
    manifest: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ExportItem:
    """One image an export writes, and the mask it gets.

    Attributes:
        image_id: the image row id.
        name: the image's name (its files in the zip are named after it).
        split: ``train`` or ``val``.
        image_path: the image file.
        mask_path: the mask file the export writes for it.
        source: ``ground_truth``, ``reference``, ``accepted``, ``corrected`` or ``pseudo``.
        run_id: the run whose pseudo mask it is (accepted and pseudo masks).
        stage: the stage that made that pseudo mask.
    """

    image_id: int
    name: str
    split: str
    image_path: Path
    mask_path: Path
    source: str
    run_id: int | None = None
    stage: str | None = None


@dataclass
class _Plan:
    items: list[ExportItem] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)


def export_project(
    store: Store,
    project: int | str | Project,
    out_zip: str | Path,
    fmt: str,
    *,
    run_id: int | None = None,
    stage: str | None = None,
    filter: ExportFilter = ExportFilter(),
    include_reference: bool = False,
    allow_unfinished: bool = False,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Export a project's images and their chosen masks as a zip (see the module docstring).

    Args:
        store: the open store.
        project: the project (id, name or :class:`Project`).
        out_zip: the zip file to write; replaced atomically when it exists.
        fmt: ``voc``, ``coco``, ``masks`` or ``overlays``.
        run_id: the run whose pseudo masks and scores to export; None exports only ground truth,
            reviewed images (and reference masks when asked).
        stage: the run's labels as they stood after this stage (each image's pseudo mask of the
            latest stage up to it); None: the latest stage.
        filter: which groups of images to keep.
        include_reference: export the ``reference`` masks of unlabelled images as their labels.
        allow_unfinished: export a run that is neither done nor awaiting review (failed, cancelled,
            queued or running: its pseudo masks are partial); refused otherwise.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ExportError: unknown format, a run of another project, an unfinished run without
            ``allow_unfinished``, a stage the run does not have, or
            an image or mask file that is missing, unreadable or of different sizes. Nothing is
            left at ``out_zip`` then.
        StoreError: no such project.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    project = get_project(store, project)
    run = _checked_run(store, project, run_id, stage, allow_unfinished)
    with _snapshot(store):
        plan = _plan(store, project, run_id, stage, filter, include_reference)
        counts = _counts(plan)
        manifest = _manifest(store, project, fmt, run, stage, plan, filter, include_reference, counts)
    out_zip = Path(out_zip)

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            writer = FORMATS[fmt](zf, project.classes)
            try:
                for done, item in enumerate(plan.items, 1):
                    image, mask = _load(item)
                    writer.add(image, mask)
                    if progress is not None:
                        progress(done, len(plan.items))
                writer.finish()
            finally:
                writer.close()
            _write_scores(store, zf, run_id)
            _write_images_csv(zf, plan.items)
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))

    atomic_save(out_zip, write)
    return ExportReport(path=out_zip, fmt=fmt, exported=len(plan.items), counts=counts,
                        left_out=tuple(plan.left_out), manifest=manifest)


def export_plan(store: Store, project: int | str | Project, *, run_id: int | None = None, stage: str | None = None,
                filter: ExportFilter = ExportFilter(), include_reference: bool = False,
                allow_unfinished: bool = False) -> tuple[list[ExportItem], list[tuple[str, str]]]:
    """What :func:`export_project` with these arguments would write, without writing it.

    Returns:
        The exported images with the mask of each, in the export's order, and ``(image name,
        reason)`` for every image it leaves out.

    Raises:
        ExportError: as :func:`export_project` for the run and stage.
        StoreError: no such project.
    """
    project = get_project(store, project)
    _checked_run(store, project, run_id, stage, allow_unfinished)
    with _snapshot(store):
        plan = _plan(store, project, run_id, stage, filter, include_reference)
    return plan.items, plan.left_out


def _checked_run(store: Store, project: Project, run_id: int | None, stage: str | None,
                 allow_unfinished: bool) -> dict[str, Any] | None:
    """The run row to export (None without a run), refused when unfinished or without ``stage``."""
    run = _get_run(store, project, run_id)
    if run is not None and run["status"] not in EXPORTABLE and not allow_unfinished:
        raise ExportError(f"run {run_id} is {run['status']}, not finished: its pseudo masks are partial; "
                          "allow an unfinished run to export them anyway (--allow-unfinished)")
    stages = run_stages(store, run_id) if run_id is not None else []
    if stage is not None and stage not in stages:
        raise ExportError(f"run {run_id} has no stage {stage!r}; its stages: {', '.join(stages) or 'none'}"
                          if run_id is not None else "a stage needs a run: pass run_id")
    return run


@contextlib.contextmanager
def _snapshot(store: Store) -> Iterator[None]:
    """One read transaction, so the plan sees the store as of one moment while a worker writes."""
    conn = store.db.conn
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _get_run(store: Store, project: Project, run_id: int | None) -> dict[str, Any] | None:
    if run_id is None:
        return None
    rows = list(store.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
    if not rows:
        raise ExportError(f"no run {run_id}")
    if rows[0]["project_id"] != project.id:
        raise ExportError(f"run {run_id} belongs to another project, not {project.name!r}")
    return rows[0]


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(ch in name for ch in "/\\\n\r\0")


def _plan(store: Store, project: Project, run_id: int | None, stage: str | None, flt: ExportFilter,
          include_reference: bool) -> _Plan:
    """Decide, from rows only, which images go out with which mask."""
    db = store.db
    given: dict[tuple[int, str], str] = {
        (r["image_id"], r["kind"]): r["path"] for r in db.query(
            "SELECT masks.image_id, masks.kind, masks.path FROM masks JOIN images ON images.id = masks.image_id "
            "WHERE images.project_id = ? AND masks.kind IN ('ground_truth', 'reference')", [project.id])}
    reviews = {r["image_id"]: r for r in db.query(
        "SELECT reviews.image_id, reviews.run_id, reviews.decision, masks.kind AS mask_kind, "
        "masks.path AS mask_path, masks.run_id AS mask_run, masks.stage AS mask_stage "
        "FROM reviews LEFT JOIN masks ON masks.id = reviews.mask_id WHERE reviews.id IN (SELECT max(id) FROM reviews WHERE project_id = ? GROUP BY image_id)", [project.id])}
    pseudo = _pseudo_masks(store, run_id, stage) if run_id is not None else {}
    scores = {r["image_id"]: r for r in db.query(
        "SELECT image_id, stability, reliable FROM scores WHERE run_id = ?", [run_id])} if run_id is not None else {}

    plan = _Plan()
    images = db.query(
        "SELECT id, name, role, path FROM images WHERE project_id = ? "
        "ORDER BY CASE role WHEN 'labelled' THEN 0 WHEN 'unlabelled' THEN 1 ELSE 2 END, name", [project.id])
    for row in images:
        image_id, name = row["id"], row["name"]
        if not _safe_name(name):
            plan.left_out.append((name, "name_not_a_file_name"))
            continue
        base = {"image_id": image_id, "name": name, "split": "val" if row["role"] == "validation" else "train",
                "image_path": store.path(row["path"])}  # an absolute (in-place) path stays as it is
        choice = _choose(store, row, given, reviews.get(image_id), pseudo, scores.get(image_id), run_id, stage,
                         flt, include_reference)
        if isinstance(choice, str):
            plan.left_out.append((name, choice))
        else:
            source, mask_path, mask_run, mask_stage = choice
            plan.items.append(ExportItem(**base, mask_path=store.path(mask_path), source=source,
                                    run_id=mask_run, stage=mask_stage))
    return plan


def _pseudo_masks(store: Store, run_id: int, stage: str | None,
                  image_id: int | None = None) -> dict[int, tuple[str, str]]:
    """image id -> (stage, path) of the run's pseudo mask of the latest stage up to ``stage``."""
    limit = stage_order(stage) if stage is not None else None
    sql = "SELECT image_id, stage, path FROM masks WHERE kind = 'pseudo' AND run_id = ?"
    params: list[Any] = [run_id]
    if image_id is not None:
        sql += " AND image_id = ?"
        params.append(image_id)
    best: dict[int, tuple[str, str]] = {}
    for r in store.db.query(sql, params):
        key = stage_order(r["stage"] or "")
        if limit is not None and key > limit:
            continue
        if r["image_id"] not in best or key > stage_order(best[r["image_id"]][0]):
            best[r["image_id"]] = (r["stage"] or "", r["path"])
    return best


def _choose(store: Store, row: dict, given: dict, review: dict | None, pseudo: dict, score: dict | None,
            run_id: int | None, stage: str | None, flt: ExportFilter,
            include_reference: bool) -> str | tuple[str, str, int | None, str | None]:
    """(source, mask path, run, stage) for one image, or the reason it is left out."""
    image_id = row["id"]
    if (image_id, "ground_truth") in given:
        if not flt.ground_truth:
            return "ground_truth_not_included"
        return "ground_truth", given[(image_id, "ground_truth")], None, None
    if row["role"] != "unlabelled":
        return "no_ground_truth_mask"
    if review is not None:
        decision = review["decision"]
        if decision == "rejected":
            return "rejected"
        if not (flt.accepted if decision == "accepted" else flt.corrected):
            return f"{decision}_not_included"
        if decision == "corrected":
            if review["mask_kind"] == "reviewed":
                return "corrected", review["mask_path"], None, None
            rows = store.db.execute("SELECT path FROM masks WHERE image_id = ? AND kind = 'reviewed' "
                                    "ORDER BY id DESC LIMIT 1", [image_id]).fetchall()
            return ("corrected", rows[0][0], None, None) if rows else "corrected_mask_missing"
        if review["mask_path"] is not None:
            return "accepted", review["mask_path"], review["mask_run"], review["mask_stage"]
        review_run = review["run_id"]
        found = pseudo if review_run == run_id else (
            _pseudo_masks(store, review_run, None, image_id) if review_run is not None else {})
        if image_id not in found:
            return "accepted_mask_missing"
        return "accepted", found[image_id][1], review_run, found[image_id][0]
    if include_reference and (image_id, "reference") in given:
        return "reference", given[(image_id, "reference")], None, None
    if run_id is None:
        return "no_label_without_run"
    if image_id not in pseudo:
        return "no_pseudo_mask"
    if score is None:
        if not (flt.reliable and flt.unreliable) or flt.min_stability is not None:
            return "not_scored"
    else:
        if not (flt.reliable if score["reliable"] else flt.unreliable):
            return "reliable_not_included" if score["reliable"] else "unreliable_not_included"
        if flt.min_stability is not None and score["stability"] < flt.min_stability:
            return "below_min_stability"
    stage_name, path = pseudo[image_id]
    return "pseudo", path, run_id, stage_name


def _load(item: ExportItem) -> tuple[ExportImage, np.ndarray]:
    """Read one image (upright JPEG bytes) and its mask, checking that they line up."""
    try:
        data = item.image_path.read_bytes()
    except OSError as exc:
        raise ExportError(f"image {item.name!r}: cannot read {item.image_path}: {exc.strerror or exc}") from None
    try:
        jpeg, size = upright_jpeg(data)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ExportError(f"image {item.name!r}: cannot decode {item.image_path}: {exc}") from None
    try:
        mask = read_mask(item.mask_path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ExportError(f"image {item.name!r}: cannot read its {item.source} mask {item.mask_path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if mask.shape != (size[1], size[0]):
        raise ExportError(f"image {item.name!r} is {size[0]}x{size[1]} but its {item.source} mask "
                          f"{item.mask_path} is {mask.shape[1]}x{mask.shape[0]}")

    def decode() -> Image.Image:
        with Image.open(io.BytesIO(jpeg)) as image:
            return image.convert("RGB")

    return ExportImage(item.name, item.split, jpeg, size, decode), mask


def _counts(plan: _Plan) -> dict[str, Any]:
    splits = {"train": 0, "val": 0}
    sources = dict.fromkeys(SOURCES, 0)
    stages: dict[str, int] = {}
    for item in plan.items:
        splits[item.split] += 1
        sources[item.source] += 1
        if item.source == "pseudo":
            stages[item.stage] = stages.get(item.stage, 0) + 1
    left_out: dict[str, int] = {}
    for _, reason in plan.left_out:
        left_out[reason] = left_out.get(reason, 0) + 1
    return {"images": len(plan.items), "splits": splits, "sources": sources,
            "pseudo_stages": dict(sorted(stages.items(), key=lambda kv: stage_order(kv[0]))),
            "left_out": left_out}


def _config_hash(run: dict[str, Any]) -> str | None:
    if run.get("config_hash"):
        return run["config_hash"]
    try:
        config = json.loads(run["config"])
    except (TypeError, ValueError):
        return None
    # The same hash as StppConfig.config_hash(): sha256 of the sorted-key JSON of the config dict.
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _checkpoint(store: Store, run_id: int, stage: str | None) -> str | None:
    """The final checkpoint (highest epoch, then latest) of ``stage``, or of the run's latest stage."""
    rows = list(store.db.query("SELECT stage, epoch, path, id FROM checkpoints WHERE run_id = ?", [run_id]))
    if stage is not None:
        rows = [r for r in rows if r["stage"] == stage]
    if not rows:
        return None
    best = max(rows, key=lambda r: (stage_order(r["stage"]), -1 if r["epoch"] is None else r["epoch"], r["id"]))
    return best["path"]


def _manifest(store: Store, project: Project, fmt: str, run: dict | None, stage: str | None, plan: _Plan,
              flt: ExportFilter, include_reference: bool, counts: dict[str, Any]) -> dict[str, Any]:
    run_info = None
    checkpoint = None
    label_models: dict[str, str | None] = {}
    if run is not None:
        run_info = {"id": run["id"], "method": run["method"], "preset": run["preset"], "status": run["status"],
                    "run_dir": run["run_dir"], "config_hash": _config_hash(run), "finished": run["finished"]}
        # The model whose labels were exported last (for stage=None, the latest labelling stage).
        latest = max(counts["pseudo_stages"], key=stage_order) if counts["pseudo_stages"] else stage
        checkpoint = _checkpoint(store, run["id"], latest)
        label_models = {s: _checkpoint(store, run["id"], s) for s in counts["pseudo_stages"]}
    layout = {"voc": {"root": VOC_ROOT, "torchvision": "VOCSegmentation(root=UNZIPPED_DIR, year='2012', "
                                                       "image_set='train'|'val'|'trainval')"},
              "coco": {"images": "images/", "annotations": "annotations/instances_{train,val}.json",
                       "category_id": "class index + 1"},
              "masks": {"images": "images/", "masks": "masks/<class>/<image>.png (255 = class)"},
              "overlays": {"overlays": "overlays/<image>.jpg"}}[fmt]
    return {
        "stpp_version": __version__,
        "created": utc_now(),
        "format": fmt,
        "layout": layout,
        "project": {"id": project.id, "name": project.name},
        "classes": project.classes.to_dict(),
        "run": run_info,
        "stage": stage,
        "model_checkpoint": checkpoint,
        "label_models": label_models,
        "config_hash": run_info["config_hash"] if run_info else None,
        "filter": asdict(flt),
        "include_reference": include_reference,
        "counts": counts,
    }


def _write_scores(store: Store, zf: zipfile.ZipFile, run_id: int | None) -> None:
    """``scores.csv`` in the run folder's format, streamed from the ``scores`` rows in rank order."""
    rows = store.db.query(
        "SELECT images.name, scores.stability, scores.reliable, scores.rank, scores.checkpoint_miou "
        "FROM scores JOIN images ON images.id = scores.image_id WHERE scores.run_id = ? "
        "ORDER BY scores.rank, images.id", [run_id]) if run_id is not None else iter(())
    k_minus_1 = 0
    if run_id is not None:
        k_minus_1 = store.db.execute(
            "SELECT max(json_array_length(checkpoint_miou)) FROM scores WHERE run_id = ? "
            "AND json_valid(checkpoint_miou)", [run_id]).fetchone()[0] or 0
    with zf.open("scores.csv", "w", force_zip64=True) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(out)
        writer.writerow(["id", "stability", "reliable", "rank"] + [f"ckpt{j}_miou" for j in range(1, k_minus_1 + 1)])
        for r in rows:
            per_ckpt = json.loads(r["checkpoint_miou"]) if r["checkpoint_miou"] else []
            per_ckpt = list(per_ckpt) + [None] * (k_minus_1 - len(per_ckpt))
            writer.writerow([r["name"], f"{r['stability']:.6f}", int(r["reliable"]), r["rank"]]
                            + ["" if v is None or v != v else f"{v:.6f}" for v in per_ckpt])
        out.flush()
        out.detach()


def _write_images_csv(zf: zipfile.ZipFile, items: list[ExportItem]) -> None:
    with zf.open("images.csv", "w", force_zip64=True) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(out)
        writer.writerow(["id", "split", "source", "run", "stage"])
        for item in items:
            writer.writerow([item.name, item.split, item.source, item.run_id or "", item.stage or ""])
        out.flush()
        out.detach()
