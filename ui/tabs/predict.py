"""Predict tab: masks for new images from a run's trained model, shown as overlays and downloadable.

The model runs in a child process (``python -m stpp predict``), never in the web process.
"""

from __future__ import annotations

import functools

import gradio as gr

from stpp.core.masks import overlay
from stpp.services.outputs import predict_images, read_prediction
from stpp.store import StoreError, get_project
from stpp.store.runs import get_run
from ui.components import chosen_run, legend_html, run_choices, run_picker
from ui.services import Services
from ui.tabs.export import LATEST, stage_update

TITLE = "Predict"
IMAGE_TYPES = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """Upload images, choose a run and stage, predict: overlays, a legend and a zip of palette-PNG masks."""
    gr.Markdown("Label new images with a trained model. Masks are palette PNGs (value = class index) named like "
                "the images.")
    with gr.Row():
        project = services.project_picker(label="Project", elem_id="predict-project")
        run, current_run = run_picker(services, label="Run", elem_id="predict-run")
        stage = gr.Dropdown([LATEST], value=LATEST, label="Model of stage", elem_id="predict-stage")
    files = gr.File(file_count="multiple", file_types=IMAGE_TYPES, label="Images", elem_id="predict-files")
    button = gr.Button("Predict", variant="primary", elem_id="predict-run-button")
    message = gr.Markdown(elem_id="predict-message")
    legend = gr.HTML("", elem_id="predict-legend")
    results = gr.Gallery([], label="Predicted masks", columns=4, height=420, elem_id="predict-gallery")
    download = gr.DownloadButton("Download the masks", visible=False, elem_id="predict-download")
    private = {"api_visibility": "private"}

    def predict(run_id, stage_name, uploads):
        run_id = chosen_run(run_id)
        if run_id is None or not uploads:
            return "**Choose a run and upload images first.**", "", [], gr.update(visible=False)
        try:
            result = predict_images(services.store, run_id, uploads, None if stage_name == LATEST else stage_name)
        except StoreError as error:
            return f"**Not predicted:** {error}", "", [], gr.update(visible=False)
        classes = get_project(services.store, get_run(services.store, run_id).project_id).classes
        shown = [(overlay(image, mask, classes.palette, 0.5), name) for image, mask, name in read_prediction(result)]
        return (f"{len(shown)} mask(s) predicted.", legend_html(classes.names, classes.palette), shown,
                gr.update(value=str(result.archive), visible=True))

    pick_run = functools.partial(run_choices, services)  # (project, current, preferred)
    project.change(pick_run, inputs=[project, run, current_run], outputs=run, **private)
    run.change(lambda r: stage_update(services, r, True), inputs=run, outputs=stage, **private)
    if shown is not None:  # runs launched or finished while the tab was hidden
        shown.select(pick_run, inputs=[project, run, current_run], outputs=run, **private).then(
            lambda r, s: stage_update(services, r, True, current=s), inputs=[run, stage], outputs=stage, **private)
    button.click(predict, inputs=[run, stage, files], outputs=[message, legend, results, download],
                 api_name="predict")
