"""Data tab: add labelled pairs, unlabelled images and validation pairs to the open project; see the
per-file report, the counts per role, and paged thumbnails (masks drawn over labelled images).

Uploads go to :func:`stpp.store.ingest_files` as they are: many files, a folder or zip archives,
mixed. A browser upload keeps file names but not folder names, so a mask is matched to its image by
name (``NAME.png`` beside ``NAME.jpg``, or ``NAME_mask.png``); folders inside a zip are kept.
Thumbnails are made once per image, mask and palette, and cached in the workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from stpp.core.masks import overlay, read_mask
from stpp.store import ImportReport, Project, StoreError, find_project, import_voc_labels, ingest_files, project_summary
from stpp.store.images import ImageFiles, count_images, images_page
from ui.services import Services

TITLE = "Data"
LABELS = "labels"
"""The upload kind that adds masks to images already in the project (a labelled CVAT/VOC export)."""
ROLE_CHOICES = [("Labelled pairs (image + mask)", "labelled"), ("Unlabelled images", "unlabelled"),
                ("Validation pairs (image + mask)", "validation"),
                ("Labels for images already here (a CVAT/VOC export zip)", LABELS)]
SHOW_CHOICES = [("Labelled", "labelled"), ("Validation", "validation"), ("Unlabelled", "unlabelled")]
REPORT_COLUMNS = ["status", "image", "file", "reason"]
REPORT_ROWS = 2000
"""At most this many report rows are shown (problems first); the summary counts them all."""
STATUS_ORDER = {"failed": 0, "skipped": 1, "added": 2}
PAGE_SIZE = 24
THUMBNAIL_PX = 192
# Reading the store (pure: store in, values out) -------------------------------------------------


def counts_markdown(services: Services, project: str | None) -> str:
    """Images per role of the project, with their masks."""
    if not project or find_project(services.store, project) is None:
        return "No project open: create or open one on the Projects tab."
    summary = project_summary(services.store, project)
    images, masks = summary.images, summary.masks
    return (f"**{html.escape(project)}**: {images['labelled']} labelled · {images['unlabelled']} unlabelled "
            f"({masks['reference']} with reference masks) · {images['validation']} validation · "
            f"{masks['ground_truth']} ground-truth masks · {summary.project.classes.num_classes} classes")


def page_count(total: int, size: int = PAGE_SIZE) -> int:
    """Pages needed for ``total`` images (at least one)."""
    return max(1, -(-total // size))


# Thumbnails -------------------------------------------------------------------------------------


def thumbnail(services: Services, project: Project, item: ImageFiles, with_mask: bool) -> Path:
    """The cached JPEG thumbnail of an image, its mask blended in the class colours when ``with_mask``.

    Named by the image's and mask's content hashes and the palette, so a new mask or a recoloured
    class makes a new thumbnail and nothing stale is shown.
    """
    palette = project.classes.palette
    mask_key = "plain"
    if with_mask and item.mask_path:
        mask_key = f"{item.mask_hash[:16]}-{hashlib.sha1(json.dumps(palette).encode()).hexdigest()[:8]}"
    path = services.settings.thumbnail_dir / str(project.id) / f"{item.hash}-{mask_key}.jpg"
    if not path.is_file():
        mask = services.store.path(item.mask_path) if mask_key != "plain" else None
        write_thumbnail(services.store.path(item.path), mask, palette, path)
    return path


def write_thumbnail(image_path: Path, mask_path: Path | None, palette: Sequence[Sequence[int]], out: Path) -> None:
    """Shrink an image to :data:`THUMBNAIL_PX` and blend its class-index mask in (ignore pixels left as they are)."""
    with Image.open(image_path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BILINEAR)
    if mask_path is not None:
        mask = np.asarray(Image.fromarray(read_mask(mask_path)).resize(image.size, Image.Resampling.NEAREST))
        image = Image.fromarray(overlay(np.asarray(image), mask, palette, classes=range(len(palette))))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: a page loading at the same time never reads half a file.
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    image.save(partial, format="JPEG", quality=85)
    os.replace(partial, out)


def gallery_page(services: Services, name: str | None, role: str, page: float | None) -> tuple[list, str, int]:
    """One page of thumbnails (``(file, caption)``), a line saying which images they are, and the page number."""
    project = find_project(services.store, name) if name else None
    if project is None:
        return [], "", 1
    total = count_images(services.store, project, role)
    page = min(max(1, int(page or 1)), page_count(total))
    items = images_page(services.store, project, role, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    with_mask = role != "unlabelled"  # reference masks measure pseudo masks; they are not the data's labels
    gallery = [(str(thumbnail(services, project, item, with_mask)), f"{item.name} ({item.width}×{item.height})")
               for item in items]
    first = (page - 1) * PAGE_SIZE + 1
    shown = f"{first}–{first + len(items) - 1} of {total}" if items else f"none of {total}"
    return gallery, f"Page {page} of {page_count(total)} · {role} images {shown}", page


# The ingestion report ---------------------------------------------------------------------------


def short_source(source: str, uploads: Sequence[str | Path]) -> str:
    """A report's file as the person knows it: the uploaded file's name, not the server's temporary path."""
    for upload in uploads:
        upload = str(upload)
        if source == upload or source.startswith(upload + ":") or source.startswith(upload + os.sep):
            return Path(upload).name + source[len(upload):]
    return source


def report_frame(report: ImportReport, uploads: Sequence[str | Path]) -> pd.DataFrame:
    """The per-file report, problems first, at most :data:`REPORT_ROWS` rows."""
    results = sorted(report.results, key=lambda r: STATUS_ORDER.get(r.status, 0))[:REPORT_ROWS]
    rows = [[r.status, r.name, short_source(r.source, uploads), r.reason] for r in results]
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def summary_markdown(report: ImportReport, project: str, role: str) -> str:
    """``12 added, 0 skipped, 2 failed`` with the project, the role and the notes."""
    text = f"**{html.escape(project)}** ({role}): {report.summary()}."
    if len(report.results) > REPORT_ROWS:
        text += f" The table shows {REPORT_ROWS} of {len(report.results)} rows, problems first."
    return "  \n".join([text, *map(html.escape, report.notes)])


def add_files(services: Services, project: str | None, role: str, uploads: Sequence[str]) -> ImportReport:
    """Ingest the uploaded files, folders and archives into the project with ``role``; for
    :data:`LABELS`, the masks of one VOC-layout zip (a CVAT "Segmentation mask 1.1" export) become the
    ground truth of the project's images of the same names, which move to the labelled set.

    Raises:
        StoreError: no project or nothing uploaded, or the store refused the import.
    """
    if not project:
        raise StoreError("open a project first (Projects tab)")
    if not uploads:
        raise StoreError("choose files, a folder or a zip archive first")
    if role == LABELS:
        if len(uploads) != 1 or Path(uploads[0]).suffix.lower() != ".zip":
            raise StoreError("labels come as one .zip in VOC layout (CVAT: export the task as \"Segmentation "
                             "mask 1.1\"); a browser folder upload loses the folder names that layout needs")
        return import_voc_labels(services.store, project, uploads[0])
    return ingest_files(services.store, project, list(uploads), role)


def discard_uploads(uploads: Sequence[str | Path]) -> None:
    """Delete uploaded files from Gradio's upload folder once they are in the store (large uploads fill /tmp).

    Files outside that folder (an API caller's own paths) are never touched.
    """
    folder = Path(gr.utils.get_upload_folder()).resolve()
    for upload in map(Path, uploads):
        if upload.resolve().is_relative_to(folder) and upload.is_file():
            upload.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                upload.parent.rmdir()  # Gradio keeps each upload in a folder of its own


# The tab ----------------------------------------------------------------------------------------


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """The project picker and counts, the upload form with its report, and the paged thumbnails."""
    gr.Markdown("Add images to the open project. **Labelled** and **validation** images need a mask: a PNG of "
                "class indices (or in the project's colours) with the image's name, e.g. `0001.jpg` + `0001.png`, "
                "or `0001_mask.png`. Masks given with unlabelled images are kept as *reference* masks (used only "
                "to measure pseudo masks). Folder names are lost in a browser upload; when images and masks are "
                "both PNGs of the same name, upload a zip with `images/` and `masks/` folders instead. A labelling "
                "task labelled in CVAT (Review tab, *Label these next*) comes back as *Labels for images already "
                "here*: its masks become the images' ground truth.")
    with gr.Row():
        project = services.project_picker(label="Project", scale=3, elem_id="data-project")
        refresh = gr.Button("Refresh", size="sm", scale=1)
    counts = gr.Markdown(elem_id="data-counts")
    with gr.Group():
        role = gr.Radio(ROLE_CHOICES, value="labelled", label="Add as", elem_id="data-role")
        with gr.Row():
            files = gr.File(file_count="multiple", label="Files or .zip archives", elem_id="data-files")
            folder = gr.File(file_count="directory", label="A folder", elem_id="data-folder")
        add = gr.Button("Add to project", variant="primary", elem_id="data-add")
    summary = gr.Markdown(elem_id="data-summary")
    report = gr.Dataframe(pd.DataFrame(columns=REPORT_COLUMNS), interactive=False, wrap=True,
                          label="Ingestion report (problems first)", elem_id="data-report")
    gr.Markdown("### Images")
    with gr.Row():
        show = gr.Radio(SHOW_CHOICES, value="labelled", label="Show", elem_id="data-show", scale=2)
        previous = gr.Button("◀ Previous", size="sm", scale=1, elem_id="data-previous")
        page = gr.Number(1, precision=0, minimum=1, label="Page", scale=1, elem_id="data-page")
        following = gr.Button("Next ▶", size="sm", scale=1, elem_id="data-next")
    where = gr.Markdown(elem_id="data-where")
    gallery = gr.Gallery(columns=6, height="auto", object_fit="contain", label="The project's images (masks drawn over "
                         "those that have one)", elem_id="data-gallery")

    private = {"api_visibility": "private"}
    view = [gallery, where, page]

    def show_project(name, shown):
        return counts_markdown(services, name), *gallery_page(services, name, shown, 1)

    def add_clicked(name, add_role, file_paths, folder_paths):
        uploads = [*(file_paths or []), *(folder_paths or [])]
        try:
            result = add_files(services, name, add_role, uploads)
        except StoreError as exc:
            return f"**Nothing added:** {exc}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        discard_uploads(uploads)
        shown = "labelled" if add_role == LABELS else add_role
        return summary_markdown(result, name, add_role), report_frame(result, uploads), None, None, shown

    def refresh_clicked(name):
        return gr.update(choices=services.project_names(), value=name)

    gr.on([project.change, show.change], show_project, inputs=[project, show], outputs=[counts, *view], **private)
    refresh.click(refresh_clicked, inputs=project, outputs=project, **private).then(
        show_project, inputs=[project, show], outputs=[counts, *view], **private)
    add.click(add_clicked, inputs=[project, role, files, folder], outputs=[summary, report, files, folder, show],
              api_name="add_images").then(show_project, inputs=[project, show], outputs=[counts, *view], **private)
    page.submit(lambda n, s, p: gallery_page(services, n, s, p), inputs=[project, show, page], outputs=view, **private)
    previous.click(lambda n, s, p: gallery_page(services, n, s, (p or 1) - 1), inputs=[project, show, page],
                   outputs=view, **private)
    following.click(lambda n, s, p: gallery_page(services, n, s, (p or 1) + 1), inputs=[project, show, page],
                    outputs=view, **private)
