"""Review tab: a run's unlabelled images ranked by stability, with their pseudo masks, to accept,
reject or correct before the next phase.

The gallery shows one page (50 images) at a time, queried from the store and drawn from cached
thumbnails; selecting an image shows it large with its mask, the K teacher checkpoints' masks
(read from the run folder) and their disagreement map; pointing at the large image names the class
under the cursor. Keys: ``a`` accept, ``r`` reject, ``→`` / ``←`` next / previous image, ``1``-``9``,
``0`` the paint class of the correction editor (brush, or fill the outlines drawn; optionally changing
only the pixels of one class).
"""

from __future__ import annotations

import base64
import html
import io
import json

import gradio as gr
import numpy as np
from PIL import Image

from stpp.core.label_order import LABEL_ORDERS, LEAST_STABLE
from stpp.core.masks import colorize, overlay, read_mask
from stpp.services.gallery import (
    GalleryQuery,
    disagreement_image,
    gallery_page,
    gallery_page_ids,
    image_detail,
    merge_painted_layer,
)
from stpp.services.outputs import label_task_zip
from stpp.services.quality import dataset_quality
from stpp.services.review import ReviewError, phase_summary, record_decision, set_reliable_ratio
from stpp.store import StoreError, get_project
from stpp.store.ranking import RANK_FILTERS
from stpp.store.runs import current_pseudo_masks, get_run, ranked_run_ids
from ui.components import badge, enlarge, find_project, hex_colour, legend_html, run_choices, run_picker
from ui.services import Services, signed_in_user

TITLE = "Review"
ORDERS = ["most stable first", "least stable first"]
ANY_CLASS = "any class"
PAINT_KEYS = "1234567890"
"""The keys that pick the paint class, in class order (the first ten classes)."""
TOOLS = ["brush", "fill outlines"]
REVIEW_JS = """
if (!window.__stppReviewKeys) {
  window.__stppReviewKeys = true;
  const keys = {a: 'review-accept', r: 'review-reject', ArrowRight: 'review-next', ArrowLeft: 'review-prev'};
  const paintKeys = '%s';
  document.addEventListener('keydown', (event) => {
    const target = event.target;
    const tag = ((target && target.tagName) || '').toLowerCase();
    const choice = tag === 'input' && ['radio', 'checkbox', 'button'].includes(target.type);
    if ((['input', 'textarea', 'select'].includes(tag) && !choice) || (target && target.isContentEditable)) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const paint = paintKeys.indexOf(event.key);
    if (paint >= 0) {
      const option = document.querySelectorAll('#review-paint-class input[type=radio]')[paint];
      if (!option || option.offsetParent === null) return;  // the Correct panel is closed
      event.preventDefault();
      option.click();
      return;
    }
    if (!keys[event.key]) return;
    const button = document.getElementById(keys[event.key]);
    if (!button || button.offsetParent === null || button.disabled) return;  // the Review tab is hidden
    event.preventDefault();
    button.click();
  });
  // The class under the cursor, read from the shown mask's class indices (an image in the legend).
  let probe = {src: null};
  const classMap = (img) => {
    if (probe.src !== img.src) {
      if (!img.complete || !img.naturalWidth) return null;
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const context = canvas.getContext('2d');
      context.drawImage(img, 0, 0);
      probe = {src: img.src, width: canvas.width, height: canvas.height,
               data: context.getImageData(0, 0, canvas.width, canvas.height).data};
    }
    return probe;
  };
  document.addEventListener('mousemove', (event) => {
    const shown = event.target.closest && event.target.closest('#review-overlay img');
    const map = document.getElementById('review-class-map');
    const out = document.getElementById('review-cursor-class');
    if (!shown || !map || !out || !shown.naturalWidth) return;
    const found = classMap(map);
    if (!found) return;
    const box = shown.getBoundingClientRect();
    const scale = Math.min(box.width / shown.naturalWidth, box.height / shown.naturalHeight);
    const u = (event.clientX - box.left - (box.width - shown.naturalWidth * scale) / 2) / (shown.naturalWidth * scale);
    const v = (event.clientY - box.top - (box.height - shown.naturalHeight * scale) / 2) / (shown.naturalHeight * scale);
    if (u < 0 || u >= 1 || v < 0 || v >= 1) return;
    const x = Math.floor(u * found.width), y = Math.floor(v * found.height);
    const index = found.data[(y * found.width + x) * 4];
    const names = JSON.parse(map.dataset.names);
    out.textContent = `Under the cursor: ${index < names.length ? names[index] : 'ignored'} (x ${x}, y ${y})`;
  });
}
""" % PAINT_KEYS


# Formatting (store rows in, display values out) ---------------------------------------------------


def make_query(run_id, page, order, show, low, high, class_name, ratio, names) -> GalleryQuery:
    """The gallery query for the tab's controls."""
    class_index = names.index(class_name) if class_name in names else None
    return GalleryQuery(int(run_id), page=int(page or 0), most_stable_first=order != ORDERS[1], show=show or "all",
                        min_score=low if low else None, max_score=high if high is not None and high < 1 else None,
                        class_index=class_index, ratio=ratio)


def page_outputs(services: Services, query: GalleryQuery) -> list:
    """Gallery value, page line, split line, page number and the page's image ids."""
    page = gallery_page(services.store, query)
    gallery = [(str(item.thumbnail), item.caption) for item in page.items]
    info = f"Page {page.page + 1} of {page.pages} · {page.total} image(s) shown"
    split = (f"Reliable: top floor({page.ranked} × {page.ratio:.2f}) = **{page.reliable}** of {page.ranked} "
             f"ranked images; unreliable: {page.ranked - page.reliable}.")
    return [gallery, info, split, page.page, [item.image_id for item in page.items]]


def empty_page() -> list:
    return [[], "No ranked run selected.", "", 0, []]


def status_text(services: Services, run_id: int | None, budget: float | None = None) -> str:
    """The run's status, how far review got (against the reviewer's budget of images, when set) and, where
    the unlabelled images have reference masks, the mIoU of the dataset the Export tab would write."""
    if not run_id:
        return "Choose a project and an ST++ run that has a stability ranking."
    run = get_run(services.store, run_id)
    summary = phase_summary(services.store, run.id)
    pause = f" after **{summary.pause}**" if summary.pause else ""
    nxt = f" · next phase: {summary.next_phase}" if summary.next_phase else ""
    reviewed = summary.ranked - summary.reliable - summary.unreliable
    target = int(budget) if budget else summary.ranked
    lines = [f"Run {run.id} is **{run.status.replace('_', ' ')}**{pause}{nxt} · {summary.ranked} ranked · "
             f"R = {summary.reliable_ratio:g}",
             f"Reviewed **{reviewed} / {target}**{' (budget)' if budget else ''}, {max(0, target - reviewed)} left · "
             f"accepted {summary.accepted} · rejected {summary.rejected} · corrected {summary.corrected}"]
    quality = dataset_quality(services.store, run.id)
    if quality.images and quality.miou is not None:
        lines.append(f"Dataset mIoU against the reference masks: **{quality.miou:.1f}** over the {quality.kept} "
                     f"of {quality.images} images the export keeps")
    return "  \n".join(lines)


def detail_outputs(services: Services, run_id, image_id, ratio, opacity, shown_classes) -> list:
    """Header, overlay, checkpoint masks, disagreement map, editor value and legend of one image."""
    if not run_id or image_id is None:
        return ["Select an image in the gallery.", None, [], None, None, ""]
    detail = image_detail(services.store, int(run_id), int(image_id), ratio)
    classes = get_project(services.store, get_run(services.store, int(run_id)).project_id).classes
    shown = [classes.names.index(n) for n in shown_classes or [] if n in classes.names]
    mask = detail.mask if detail.mask is not None else np.full(detail.image.shape[:2], 255, np.uint8)
    picture = overlay(detail.image, mask, classes.palette, opacity, shown, classes.ignore_index)
    masks = [(colorize(m, classes.palette, classes.ignore_index), f"checkpoint {j}")
             for j, m in enumerate(detail.checkpoint_masks, start=1)]
    k = len(detail.checkpoint_masks)
    disagreement = disagreement_image(detail.image, detail.disagreement, k) if detail.disagreement is not None else None
    editor = {"background": enlarge(overlay(detail.image, mask, classes.palette, 0.5, None, classes.ignore_index)),
              "layers": [], "composite": None}
    return [header_text(detail, k), enlarge(picture), masks, enlarge(disagreement), editor,
            legend_html(classes.names, classes.palette, shown) + class_map_html(mask, classes.names)]


def class_map_html(mask: np.ndarray, names) -> str:
    """The shown mask's class indices as a hidden PNG (the page reads the class under the cursor from it)
    and the line that names that class."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), "L").save(buffer, format="PNG")
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img id="review-class-map" alt="" hidden src="{source}" data-names="{html.escape(json.dumps(list(names)))}">'
            '<div id="review-cursor-class">Point at the image to read the class under the cursor.</div>')


def paint_choices(names) -> list[tuple[str, str]]:
    """The paint-class options, each labelled with its key where it has one: ``("1 sky", "sky")``."""
    return [(f"{key} {name}" if key else name, name) for key, name in zip([*PAINT_KEYS, *[""] * len(names)], names)]


def header_text(detail, k: int) -> str:
    """``**name** · rank 3 · stability 0.912 · reliable · accepted``, and the per-checkpoint agreement."""
    parts = [f"**{detail.name}**"]
    if detail.rank is not None:
        parts += [f"rank {detail.rank}", f"stability {detail.stability:.4f}", badge(detail.reliable)]
    parts.append(f"decision: {detail.decision or 'not reviewed'}")
    parts.append(f"mask: {detail.mask_source or 'none'}")
    lines = [" · ".join(parts)]
    if detail.per_checkpoint:
        lines.append("Agreement with checkpoint %d (mIoU): " % k + ", ".join(
            f"checkpoint {j}: {'—' if v is None else f'{v:.3f}'}" for j, v in enumerate(detail.per_checkpoint, 1)))
    if detail.disagreement is not None:
        share = 100.0 * float((detail.disagreement > 0).mean())
        lines.append(f"Disagreement: {share:.1f}% of pixels differ from checkpoint {k} in at least one earlier "
                     "checkpoint (yellow: one, red: all).")
    return "  \n".join(lines)


def pseudo_editor(services: Services, run_id, image_id) -> dict | None:
    """An editor value over the run's current pseudo mask (the correction's undo)."""
    detail = image_detail(services.store, int(run_id), int(image_id))
    classes = get_project(services.store, get_run(services.store, int(run_id)).project_id).classes
    found = current_pseudo_masks(services.store, int(run_id), [int(image_id)]).get(int(image_id))
    if found is None:
        return None
    mask = read_mask(services.store.path(found[1]))
    return {"background": enlarge(overlay(detail.image, mask, classes.palette, 0.5, None, classes.ignore_index)),
            "layers": [], "composite": None}


def merged_correction(services: Services, run_id, image_id, editor, base: str, tool: str = TOOLS[0],
                      only_class: str = ANY_CLASS) -> np.ndarray:
    """The mask the editor's painted layers make out of its base mask (shown or pseudo), painted with
    ``tool`` (one of :data:`TOOLS`) and changing only the pixels of ``only_class`` when it names a class."""
    layers = [layer for layer in (editor or {}).get("layers") or [] if layer is not None]
    if not layers or not any(np.asarray(layer)[..., 3].any() for layer in layers):
        raise ReviewError("nothing is painted: paint over the image with a class colour first")
    run = get_run(services.store, int(run_id))
    classes = get_project(services.store, run.project_id).classes
    detail = image_detail(services.store, run.id, int(image_id))
    mask = detail.mask
    if base == "pseudo" or mask is None:
        stage_path = current_pseudo_masks(services.store, run.id, [int(image_id)]).get(int(image_id))
        mask = read_mask(services.store.path(stage_path[1])) if stage_path else np.full(detail.image.shape[:2], 0)
    replaced = list(classes.names).index(only_class) if only_class in classes.names else None
    for layer in layers:
        mask = merge_painted_layer(mask, np.asarray(layer), classes.palette, fill=tool == TOOLS[1],
                                   only_class=replaced)
    return mask


def step_selection(services: Services, query: GalleryQuery, image: int | None, step: int) -> tuple[int | None, int]:
    """The image ``step`` places from ``image`` in the filtered order (the first when none is selected),
    and the gallery page it is on; at either end the selection stays."""
    ids = gallery_page_ids(services.store, query)
    if not ids:
        return image, query.page
    if image is None or image not in ids:
        index = 0 if image is None else min(query.page * query.per_page, len(ids) - 1)
    else:
        index = min(max(ids.index(image) + step, 0), len(ids) - 1)
    return ids[index], index // query.per_page


# The tab ------------------------------------------------------------------------------------------


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """The run picker, filters, paged gallery, selected-image panel, decisions and the mask editor."""
    gr.Markdown("Review the pseudo masks of a run's unlabelled images, ranked by **stability**: how much the "
                "teacher's checkpoints agree. Accept good masks, reject bad images, correct masks by painting. "
                "Accepted and corrected images train as labelled images in the next phases; rejected images "
                "leave them. Keys: `a` accept · `r` reject · `→` next · `←` previous · `1`-`0` paint class.")
    gr.HTML("", js_on_load=REVIEW_JS, elem_id="review-shortcuts")
    with gr.Row():
        project = services.project_picker(label="Project", elem_id="review-project", scale=2)
        run, current_run = run_picker(services, label="Run", elem_id="review-run", scale=3)
        refresh = gr.Button("Refresh", size="sm", elem_id="review-refresh", scale=1)
    with gr.Row():
        status = gr.Markdown(elem_id="review-status")
        budget = gr.Number(None, label="Review budget (images)", precision=0, minimum=0, scale=0, min_width=160,
                           elem_id="review-budget")
    with gr.Row():
        order = gr.Radio(ORDERS, value=ORDERS[0], label="Order", elem_id="review-order")
        show = gr.Dropdown(list(RANK_FILTERS), value="all", label="Show", elem_id="review-show")
        low = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Min stability", elem_id="review-min")
        high = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Max stability", elem_id="review-max")
        class_filter = gr.Dropdown([ANY_CLASS], value=ANY_CLASS, label="Contains class", elem_id="review-class")
    with gr.Row():
        ratio = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Reliable ratio R (preview)", elem_id="review-ratio",
                          scale=3)
        save_ratio = gr.Button("Use this R for the next phase", size="sm", elem_id="review-save-ratio", scale=1)
    split = gr.Markdown(elem_id="review-split")
    gallery = gr.Gallery([], label="Ranked images", columns=6, height=640, allow_preview=False,
                         object_fit="contain", elem_id="review-gallery")
    with gr.Row():
        prev_page = gr.Button("◀ Previous page", size="sm", elem_id="review-prev-page")
        page_info = gr.Markdown(elem_id="review-page-info")
        next_page = gr.Button("Next page ▶", size="sm", elem_id="review-next-page")
    message = gr.Markdown(elem_id="review-message")
    selected_text = gr.Markdown("Select an image in the gallery.", elem_id="review-selected")
    with gr.Row():
        accept = gr.Button("Accept (a)", variant="primary", elem_id="review-accept")
        reject = gr.Button("Reject (r)", variant="stop", elem_id="review-reject")
        prev_image = gr.Button("← Previous", elem_id="review-prev")
        next_image = gr.Button("Next →", elem_id="review-next")
    with gr.Row():
        with gr.Column(scale=3):
            big = gr.Image(None, label="Image with mask", interactive=False, format="png", elem_id="review-overlay")
        with gr.Column(scale=2):
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="review-opacity")
            class_toggles = gr.CheckboxGroup([], label="Classes shown", elem_id="review-classes")
            legend = gr.HTML("", elem_id="review-legend")
    with gr.Row():
        checkpoints = gr.Gallery([], label="Teacher checkpoints' masks (single scale)", columns=3, height=240,
                                 allow_preview=False, object_fit="contain", elem_id="review-checkpoints")
        disagreement = gr.Image(None, label="Disagreement map: earlier checkpoints vs the last",
                                interactive=False, format="png", elem_id="review-disagreement")
    with gr.Accordion("Correct the mask", open=False, elem_id="review-correct-panel"):
        gr.Markdown("Pick the class to paint by name or by its key (`1`-`9`, `0`), paint, then save. **brush**: "
                    "the pixels you paint take the class. **fill outlines**: draw the outline of a region (along "
                    "the image's edge too, where it meets it): everything inside takes the class. *Change only "
                    "pixels of* a class replaces just that class inside what you paint (car over road, not over "
                    "the pavement). The eraser removes paint; the brush size is in the editor's toolbar. *Revert* "
                    "starts again from the pseudo mask.")
        paint_class = gr.Radio([], label="Paint class", elem_id="review-paint-class")
        with gr.Row():
            tool = gr.Radio(TOOLS, value=TOOLS[0], label="Tool", elem_id="review-tool")
            only_class = gr.Dropdown([ANY_CLASS], value=ANY_CLASS, label="Change only pixels of",
                                     elem_id="review-only-class")
        editor = gr.ImageEditor(None, type="numpy", image_mode="RGBA", sources=[], transforms=[], layers=False,
                                brush=gr.Brush(colors=["#000000"], color_mode="fixed"), eraser=gr.Eraser(),
                                label="Editor", elem_id="review-editor", height=480)
        with gr.Row():
            save = gr.Button("Save correction", variant="primary", elem_id="review-save-correction")
            revert = gr.Button("Revert to the pseudo mask", elem_id="review-revert")
    with gr.Accordion("Label these next", open=False, elem_id="review-label-next-panel"):
        gr.Markdown("The run's images that still wait for a person's label (not accepted or corrected here) as a "
                    "CVAT task: the images, their current pseudo masks as pre-annotations and a `labelmap.txt` "
                    "(\"Segmentation mask 1.1\"). Label them in CVAT, export the task in the same format and add "
                    "the zip on the **Data** tab as *Labels for images already here*: they become ground truth and "
                    "the next run trains on them as labelled images. *Lowest teacher confidence first* sorted the "
                    "pseudo masks best on CamVid (BENCHMARKS.md); the first task in that order runs the final "
                    "teacher once over the ranked images (minutes on a CPU for hundreds of images).")
        with gr.Row():
            task_count = gr.Number(20, precision=0, minimum=1, label="Images", scale=0, min_width=120,
                                   elem_id="review-label-count")
            task_order = gr.Radio([(words, order) for order, words in LABEL_ORDERS.items()], value=LEAST_STABLE,
                                  label="Order", elem_id="review-label-order")
            make_task = gr.Button("Write the labelling task", elem_id="review-label-task")
        task_message = gr.Markdown(elem_id="review-label-message")
        task_download = gr.DownloadButton("Download the task", visible=False, elem_id="review-label-download")
    page = gr.State(0)
    page_ids = gr.State([])
    selected = gr.State(None)
    base = gr.State("shown")
    names = gr.State([])

    filters = [order, show, low, high, class_filter, ratio, names]
    page_outs = [gallery, page_info, split, page, page_ids]
    detail_outs = [selected_text, big, checkpoints, disagreement, editor, legend]
    private = {"api_visibility": "private"}

    def load_page(run_id, page_number, *controls):
        if not run_id:
            return empty_page()
        return page_outputs(services, make_query(run_id, page_number, *controls))

    def pick_run(project_name, current, preferred):
        ranked = ranked_run_ids(services.store, project_name) if find_project(services, project_name) else []
        return run_choices(services, project_name, current, only=ranked, preferred=preferred)

    def run_changed(run_id, budget_value):
        if not run_id:
            return [status_text(services, None), gr.skip(), gr.update(choices=[ANY_CLASS], value=ANY_CLASS),
                    gr.update(choices=[], value=[]), [], gr.skip(), gr.skip()]
        classes = get_project(services.store, get_run(services.store, int(run_id)).project_id).classes
        ratio_value = get_run(services.store, int(run_id)).config["selftrain"]["reliable_ratio"]
        return [status_text(services, run_id, budget_value), ratio_value,
                gr.update(choices=[ANY_CLASS, *classes.names], value=ANY_CLASS),
                gr.update(choices=list(classes.names), value=list(classes.names)), list(classes.names),
                gr.update(choices=paint_choices(classes.names), value=classes.names[0]),
                gr.update(choices=[ANY_CLASS, *classes.names], value=ANY_CLASS)]

    def brush_of(run_id, class_name):
        if not run_id or class_name is None:
            return gr.skip()
        classes = get_project(services.store, get_run(services.store, int(run_id)).project_id).classes
        colour = hex_colour(classes.palette[list(classes.names).index(class_name)])
        return gr.update(brush=gr.Brush(colors=[colour], default_color=colour, color_mode="fixed"))

    def select(evt: gr.SelectData, ids, run_id, ratio_value, opacity_value, shown):
        image = ids[evt.index] if ids and evt.index is not None and evt.index < len(ids) else None
        return [image, "shown", *detail_outputs(services, run_id, image, ratio_value, opacity_value, shown)]

    def redraw(run_id, image, ratio_value, opacity_value, shown):
        return detail_outputs(services, run_id, image, ratio_value, opacity_value, shown)

    def restyle(run_id, image, ratio_value, opacity_value, shown):
        values = detail_outputs(services, run_id, image, ratio_value, opacity_value, shown)
        return values[:4] + [gr.skip(), values[5]]  # a new opacity must not wipe the paint in the editor

    def decide(decision, run_id, image, page_number, controls, request):
        if not run_id or image is None:
            return ["Select an image first.", image, *[gr.skip()] * 5]
        query = make_query(run_id, page_number, *controls)
        following, page_number = step_selection(services, query, int(image), 1)
        try:
            saved = record_decision(services.store, int(run_id), int(image), decision, user=signed_in_user(request))
        except StoreError as error:
            return [f"**Not saved:** {error}", image, *[gr.skip()] * 5]
        return [f"`{saved.image}` {decision}.", following, *load_page(run_id, page_number, *controls)]

    def accept_image(run_id, image, page_number, o, sh, lo, hi, cl, r, n, request: gr.Request):
        return decide("accepted", run_id, image, page_number, (o, sh, lo, hi, cl, r, n), request)

    def reject_image(run_id, image, page_number, o, sh, lo, hi, cl, r, n, request: gr.Request):
        return decide("rejected", run_id, image, page_number, (o, sh, lo, hi, cl, r, n), request)

    def move(step, run_id, image, page_number, *controls):
        if not run_id:
            return [image, *[gr.skip()] * 5]
        target, page_number = step_selection(services, make_query(run_id, page_number, *controls), image, step)
        return [target, *load_page(run_id, page_number, *controls)]

    def save_correction(run_id, image, editor_value, base_kind, tool_name, replaced, request: gr.Request):
        try:
            mask = merged_correction(services, run_id, image, editor_value, base_kind, tool_name, replaced)
            saved = record_decision(services.store, int(run_id), int(image), "corrected", mask=mask,
                                    user=signed_in_user(request))
        except (StoreError, ValueError, TypeError) as error:
            return f"**Not saved:** {error}"
        return f"Correction of `{saved.image}` saved."

    def keep_ratio(run_id, value):
        try:
            set_reliable_ratio(services.store, int(run_id), value)
        except (StoreError, TypeError) as error:
            return f"**R not saved:** {error}"
        return f"R = {value:g} saved: the next phase trains on this split."

    def revert_editor(run_id, image):
        if not run_id or image is None:
            return gr.skip(), "shown"
        return pseudo_editor(services, run_id, image), "pseudo"

    def write_label_task(run_id, count, order, progress=gr.Progress()):
        if not run_id:
            return "**Choose a ranked run first.**", gr.update(visible=False)
        try:
            task = label_task_zip(services.store, int(run_id), int(count or 0), order or LEAST_STABLE,
                                  on_progress=lambda done, total: progress((done, total), desc="teacher pass",
                                                                           unit="images"))
        except StoreError as error:
            return f"**No task written:** {error}", gr.update(visible=False)
        names = ", ".join(f"`{image.name}`" for image in task.images[:10])
        more = f" and {len(task.images) - 10} more" if len(task.images) > 10 else ""
        return (f"{len(task.images)} image(s) to label, {LABEL_ORDERS[task.order]}: {names}{more}.",
                gr.update(value=str(task.path), visible=True))

    def show_status(run_id, budget_value):
        return status_text(services, run_id, budget_value)

    refresh_chain = dict(fn=load_page, inputs=[run, page, *filters], outputs=page_outs, **private)
    after = dict(fn=redraw, inputs=[run, selected, ratio, opacity, class_toggles], outputs=detail_outs, **private)
    status_chain = dict(fn=show_status, inputs=[run, budget], outputs=status, **private)
    # Opening the tab re-reads the runs too: one that paused for review since the page loaded is not listed yet.
    refresh_events = [refresh.click] + ([shown.select] if shown is not None else [])
    gr.on(refresh_events, pick_run, inputs=[project, run, current_run], outputs=run, **private).then(
        **status_chain).then(**refresh_chain)
    project.change(pick_run, inputs=[project, run, current_run], outputs=run, **private)
    budget.change(**status_chain)
    run.change(run_changed, inputs=[run, budget],
               outputs=[status, ratio, class_filter, class_toggles, names, paint_class, only_class], **private).then(lambda: 0, outputs=page, **private).then(**refresh_chain)
    gr.on([order.change, show.change, low.release, high.release, class_filter.change, ratio.release],
          lambda: 0, outputs=page, **private).then(**refresh_chain)
    prev_page.click(lambda p: max(0, p - 1), inputs=page, outputs=page, **private).then(**refresh_chain)
    next_page.click(lambda p: p + 1, inputs=page, outputs=page, **private).then(**refresh_chain)
    gallery.select(select, inputs=[page_ids, run, ratio, opacity, class_toggles],
                   outputs=[selected, base, *detail_outs], **private)
    gr.on([opacity.release, class_toggles.change], restyle, inputs=[run, selected, ratio, opacity, class_toggles],
          outputs=detail_outs, **private)
    decide_ins, decide_outs = [run, selected, page, *filters], [message, selected, *page_outs]
    accept.click(accept_image, inputs=decide_ins, outputs=decide_outs, api_name="review_accept").then(
        **after).then(**status_chain)
    reject.click(reject_image, inputs=decide_ins, outputs=decide_outs, api_name="review_reject").then(
        **after).then(**status_chain)
    next_image.click(lambda *a: move(1, *a), inputs=decide_ins, outputs=[selected, *page_outs], **private).then(
        lambda: "shown", outputs=base, **private).then(**after)
    prev_image.click(lambda *a: move(-1, *a), inputs=decide_ins, outputs=[selected, *page_outs], **private).then(
        lambda: "shown", outputs=base, **private).then(**after)
    save.click(save_correction, inputs=[run, selected, editor, base, tool, only_class], outputs=message,
               api_name="review_correct").then(lambda: "shown", outputs=base, **private).then(
        **refresh_chain).then(**after).then(**status_chain)
    revert.click(revert_editor, inputs=[run, selected], outputs=[editor, base], **private)
    make_task.click(write_label_task, inputs=[run, task_count, task_order], outputs=[task_message, task_download],
                    api_name="review_label_task")
    paint_class.change(brush_of, inputs=[run, paint_class], outputs=editor, **private)
    save_ratio.click(keep_ratio, inputs=[run, ratio], outputs=message, api_name="review_save_ratio").then(
        **status_chain)
