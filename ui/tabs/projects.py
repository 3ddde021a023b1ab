"""Projects tab: every project in the store with its image counts per role."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from stpp.store import list_project_summaries
from ui.services import Services

TITLE = "Projects"
COLUMNS = ["project", "classes", "labelled", "unlabelled", "validation",
           "ground-truth masks", "reference masks", "runs", "created"]


def project_table(services: Services) -> pd.DataFrame:
    """One row per project: name, class count, images per role, mask counts, runs, creation date."""
    rows = [
        [s.name, s.project.classes.num_classes, s.images["labelled"], s.images["unlabelled"],
         s.images["validation"], s.masks["ground_truth"], s.masks["reference"], s.runs, s.project.created[:10]]
        for s in list_project_summaries(services.store)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def build(services: Services) -> None:
    """The projects table (re-read from the store on every page load) and a refresh button."""
    gr.Markdown("Projects in this workspace. The demo project `camvid-demo` holds real CamVid street "
                "scenes; unlabelled images keep their true masks as *reference* masks, used only to "
                "measure pseudo-mask quality, never for training.")
    table = gr.Dataframe(value=project_table(services), headers=COLUMNS, interactive=False,
                         label="Projects", elem_id="projects-table")
    refresh = gr.Button("Refresh", size="sm")
    # triggers=None: runs on every page load, so a reload shows what other processes wrote.
    gr.on(triggers=None, fn=lambda: project_table(services), outputs=table, api_visibility="private")
    refresh.click(lambda: project_table(services), outputs=table, api_name="list_projects")
