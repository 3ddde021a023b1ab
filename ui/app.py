"""The Gradio app: a header, then one tab per module in :data:`TABS`, each built by ``build(services)``."""

from __future__ import annotations

import gradio as gr

from ui.services import Services
from ui.tabs import data, export, phases, predict, projects, review, train
from ui.urlstate import PLACE_READ_JS, TAB_KEY, query_value, tab_js

TABS = [projects, data, train, review, phases, export, predict]
"""Tab modules in display order; each has ``TITLE`` and ``build(services, shown) -> None`` (``shown``: its
``gr.Tab``, whose ``select`` tells a tab it is opened, to re-read what changed while it was hidden)."""


def build_app(services: Services) -> gr.Blocks:
    """The whole interface over ``services``; launch it with ``.launch(...)``."""
    ttl = services.settings.download_ttl_s
    # Gradio copies every file it serves into its cache and, without delete_cache, never removes it.
    with gr.Blocks(title="stpp", delete_cache=(max(1, ttl // 4), ttl)) as app:
        services = services.with_page_state()
        gr.Markdown("# stpp\nSemi-supervised semantic segmentation with ST++ self-training: "
                    "train on a few labelled images, review the pseudo masks, export a dataset.")
        tab_ids = [tab.__name__.rsplit(".", 1)[-1] for tab in TABS]
        with gr.Tabs() as tabs:
            for tab, tab_id in zip(TABS, tab_ids):
                with gr.Tab(tab.TITLE, id=tab_id) as shown:
                    tab.build(services, shown)
                shown.select(None, js=tab_js(tab_id), api_visibility="private")  # into the page's address
        gr.Markdown(f"Workspace: `{services.settings.workspace}`", elem_id="workspace-note")

        def opening_tab(request: gr.Request):
            tab_id = query_value(request, TAB_KEY, tab_ids)
            return gr.Tabs(selected=tab_id) if tab_id else gr.skip()

        app.load(opening_tab, outputs=tabs, api_visibility="private").then(
            None, js=PLACE_READ_JS, api_visibility="private")
    return app
