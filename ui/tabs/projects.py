"""Projects tab: the workspace's projects; open one (or the demo) as the page's current project, see
its disk usage, create a project (classes typed in a table or read from ``classes.json`` /
``labelmap.txt``), delete one after typing its name.

Nothing from the store is baked into the page when it is built: every value is read on page load,
so a page served before sign-in carries no project data.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from stpp.core.classes import ClassInfo, DataError, default_palette, make_classes, parse_classes_json, parse_labelmap
from stpp.core.units import format_bytes
from stpp.store import (
    DEMO_PROJECT,
    StoreError,
    create_project,
    delete_project,
    disk_usage,
    find_project,
    get_project,
    list_project_summaries,
    seed_demo_project,
)
from stpp.store.runs import list_runs
from ui.services import Services, signed_in_user

TITLE = "Projects"
COLUMNS = ["project", "classes", "labelled", "unlabelled", "validation",
           "ground-truth masks", "reference masks", "runs", "created"]
CLASS_COLUMNS = ["class", "colour"]
DEFAULT_CLASSES = [["background", "#000000"], ["object", "#800000"]]
ACTIVE_STATUSES = ("queued", "running")
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


# Formatting and parsing (pure) ------------------------------------------------------------------


def project_table(services: Services) -> pd.DataFrame:
    """One row per project: name, class count, images per role, mask counts, runs, creation date."""
    rows = [
        [s.name, s.project.classes.num_classes, s.images["labelled"], s.images["unlabelled"],
         s.images["validation"], s.masks["ground_truth"], s.masks["reference"], s.runs, s.project.created[:10]]
        for s in list_project_summaries(services.store)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def classes_frame(classes: ClassInfo) -> pd.DataFrame:
    """The class table: one row per class, its colour as ``#rrggbb``."""
    rows = [[name, "#{:02x}{:02x}{:02x}".format(*colour)] for name, colour in zip(classes.names, classes.palette)]
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


def classes_from_frame(frame: pd.DataFrame | None) -> ClassInfo:
    """The classes typed in the class table, in row order; rows without a name are left out.

    A colour is ``#rrggbb`` or ``r,g,b``; an empty one gets the VOC colour of its index.

    Raises:
        DataError: no class, a bad colour, or anything :func:`~stpp.core.classes.make_classes` refuses.
    """
    rows = [] if frame is None else frame.fillna("").astype(str).values.tolist()
    rows = [(row[0].strip(), row[1].strip() if len(row) > 1 else "") for row in rows if row and row[0].strip()]
    defaults = default_palette(len(rows))
    palette = [_colour(name, text) if text else defaults[index] for index, (name, text) in enumerate(rows)]
    return make_classes([name for name, _ in rows], palette, source="the class table")


def _colour(name: str, text: str) -> tuple[int, int, int]:
    if match := _HEX.fullmatch(text):
        value = int(match.group(1), 16)
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    raise DataError(f"the class table: colour of {name!r} is {text!r}; expected #rrggbb or r,g,b")


def read_class_file(path: str | Path) -> ClassInfo:
    """Classes from an uploaded ``classes.json`` or ``labelmap.txt`` (a ``.txt`` is read as a label map).

    Raises:
        DataError: unreadable or invalid; the message names the file and the line at fault.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name}: cannot read the class file ({exc})") from None
    parse = parse_labelmap if path.suffix.lower() == ".txt" else parse_classes_json
    return parse(text, path.name)


def swatches_html(frame: pd.DataFrame | None) -> str:
    """A colour swatch per class of the class table, or the reason it cannot be read."""
    try:
        classes = classes_from_frame(frame)
    except DataError as exc:
        return f'<span class="stpp-classes-error">{html.escape(str(exc))}</span>'
    return " ".join(f'<span style="display:inline-block;margin:2px 8px 2px 0"><span style="display:inline-block;'
                    f'width:14px;height:14px;vertical-align:middle;border:1px solid #999;background:rgb{colour}">'
                    f'</span> {html.escape(name)}</span>' for name, colour in zip(classes.names, classes.palette))


def usage_markdown(services: Services, name: str | None) -> str:
    """The project's disk usage in the workspace (and of files registered in place, outside it)."""
    if not name or find_project(services.store, name) is None:
        return "No project open."
    usage = disk_usage(services.store, name)
    text = (f"**{html.escape(name)}** takes **{format_bytes(usage.total)}** in the workspace: images "
            f"{format_bytes(usage.images)}, masks {format_bytes(usage.masks)}, runs {format_bytes(usage.runs)} "
            f"({len(usage.runs_by_id)} runs).")
    if usage.in_place:
        text += f" Images registered in place, outside the workspace: {format_bytes(usage.in_place)}."
    return text


def user_markdown(request: gr.Request) -> str:
    """``Signed in as …`` with a sign-out link, or nothing when the app runs without sign-in."""
    user = signed_in_user(request)
    return f"Signed in as **{html.escape(user)}** · [sign out](logout)" if user else ""


# Actions (validate, call the store, say what happened) -------------------------------------------


def create(services: Services, name: str, frame: pd.DataFrame | None) -> str:
    """Create a project with the table's classes; returns its name.

    Raises:
        StoreError: a bad or taken name, or bad classes.
    """
    try:
        classes = classes_from_frame(frame)
    except DataError as exc:
        raise StoreError(str(exc)) from None
    return create_project(services.store, name, classes).name


def delete(services: Services, name: str | None, typed: str) -> None:
    """Delete a project, its files and its cached thumbnails, once its name was typed to confirm.

    Raises:
        StoreError: no project, the typed name does not match, or a run of it is queued or running.
    """
    if not name:
        raise StoreError("open a project first")
    if (typed or "").strip() != name:
        raise StoreError(f"type the project's name ({name}) in the box to confirm")
    project = get_project(services.store, name)
    busy = list_runs(services.store, project, statuses=ACTIVE_STATUSES)
    if busy:
        raise StoreError(f"run {busy[0].id} of {name!r} is {busy[0].status}; cancel it on the Train tab first")
    delete_project(services.store, project)
    shutil.rmtree(services.settings.thumbnail_dir / str(project.id), ignore_errors=True)


def open_demo(services: Services) -> str:
    """The demo project's name, seeding it from the shipped demo data if it is missing.

    Raises:
        StoreError: there is no demo data, or it fails to import.
    """
    if find_project(services.store, DEMO_PROJECT) is None:
        if services.settings.demo_dir is None:
            raise StoreError("this app was started without the demo data")
        seed_demo_project(services.store, services.settings.demo_dir)
    return DEMO_PROJECT


# The tab ----------------------------------------------------------------------------------------


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """The projects table, the current project (open, demo, disk usage), and the create and delete forms."""
    user = gr.Markdown(elem_id="signed-in")
    gr.Markdown("Projects in this workspace. The demo project `camvid-demo` holds real CamVid street "
                "scenes; unlabelled images keep their true masks as *reference* masks, used only to "
                "measure pseudo-mask quality, never for training.")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, label="Projects", elem_id="projects-table")
    refresh = gr.Button("Refresh", size="sm")
    with gr.Row():
        current = services.project_picker(label="Open project (used by the other tabs)", scale=3,
                                          elem_id="projects-current")
        demo = gr.Button("Open the demo project", scale=1, elem_id="projects-open-demo")
    usage = gr.Markdown(elem_id="projects-usage")
    message = gr.Markdown(elem_id="projects-message")
    with gr.Accordion("New project", open=False, elem_id="projects-new"):
        name = gr.Textbox(label="Name", placeholder="e.g. street-scenes", elem_id="projects-new-name",
                          info="Letters, digits, '.', '_', '+' and '-': typed as it is on the command line")
        class_file = gr.File(label="Classes from a file: classes.json or labelmap.txt (fills the table)",
                             file_types=[".json", ".txt"], elem_id="projects-class-file")
        classes = gr.Dataframe(pd.DataFrame(DEFAULT_CLASSES, columns=CLASS_COLUMNS), headers=CLASS_COLUMNS,
                               interactive=True, row_count=len(DEFAULT_CLASSES), column_count=2,
                               label="Classes, in mask-index order (colour: #rrggbb; empty: a VOC colour)",
                               elem_id="projects-classes")
        swatches = gr.HTML(swatches_html(pd.DataFrame(DEFAULT_CLASSES, columns=CLASS_COLUMNS)),
                           elem_id="projects-swatches")
        create_button = gr.Button("Create project", variant="primary", elem_id="projects-create")
    with gr.Accordion("Delete the open project", open=False, elem_id="projects-delete-box"):
        gr.Markdown("Deletes the project's images, masks, runs, scores and reviews from the workspace. "
                    "Images registered in place stay where they are. This cannot be undone.")
        typed = gr.Textbox(label="Type the project's name to confirm", elem_id="projects-delete-confirm")
        delete_button = gr.Button("Delete project", variant="stop", elem_id="projects-delete")

    # A tab built outside build_app (a handler test) gets a state of its own.
    state = services.current_project if services.current_project is not None else gr.State(None)
    private = {"api_visibility": "private"}

    def load_class_file(path):
        if not path:
            return gr.skip(), gr.skip()
        try:
            frame = classes_frame(read_class_file(path))
        except DataError as exc:
            return gr.skip(), f"**Classes not read:** {exc}"
        return frame, f"Read {len(frame)} classes from {Path(path).name}."

    def create_clicked(new_name, frame):
        try:
            created = create(services, new_name, frame)
        except StoreError as exc:
            return f"**Not created:** {exc}", gr.skip(), gr.skip(), gr.skip()
        return (f"Created project **{html.escape(created)}**; add images on the Data tab.", project_table(services),
                created, "")

    def delete_clicked(open_name, confirmation):
        try:
            delete(services, open_name, confirmation)
        except StoreError as exc:
            return f"**Not deleted:** {exc}", gr.skip(), gr.skip(), gr.skip()
        return f"Deleted project **{html.escape(open_name)}**.", project_table(services), services.default_project(), ""

    def demo_clicked():
        try:
            return f"Opened **{open_demo(services)}**.", project_table(services), DEMO_PROJECT
        except StoreError as exc:
            return f"**Demo not opened:** {exc}", gr.skip(), gr.skip()

    # triggers=None: runs on every page load, so a reload shows what other processes wrote.
    gr.on(triggers=None, fn=lambda: project_table(services), outputs=table, **private)
    gr.on(triggers=None, fn=user_markdown, outputs=user, **private)
    refresh.click(lambda: project_table(services), outputs=table, api_name="list_projects")
    if shown is not None:  # images added or runs made on other tabs since the page loaded
        shown.select(lambda n: (project_table(services), usage_markdown(services, n)), inputs=current,
                     outputs=[table, usage], **private)
    current.change(lambda n: (usage_markdown(services, n), ""), inputs=current, outputs=[usage, typed], **private)
    class_file.upload(load_class_file, inputs=class_file, outputs=[classes, message], **private)
    classes.change(swatches_html, inputs=classes, outputs=swatches, **private)
    create_button.click(create_clicked, inputs=[name, classes], outputs=[message, table, state, name],
                        api_name="create_project")
    delete_button.click(delete_clicked, inputs=[current, typed], outputs=[message, table, state, typed],
                        api_name="delete_project")
    demo.click(demo_clicked, outputs=[message, table, state], api_name="open_demo")
