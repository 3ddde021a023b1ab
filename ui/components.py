"""Small display helpers shared by the tabs: class colours, legends, badges and pickers (no torch)."""

from __future__ import annotations

import html
import time
from typing import Sequence

import gradio as gr

from stpp.core.method import METHOD_LABELS
from stpp.store import Project, StoreError, list_projects
from stpp.store.runs import Run, list_runs
from ui.services import Services
from ui.urlstate import RUN_JS


def hex_colour(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


def legend_html(names: Sequence[str], palette: Sequence[Sequence[int]], shown: Sequence[int] | None = None) -> str:
    """A class legend: a colour swatch and the name of each class (hidden classes struck through)."""
    items = []
    for index, (name, colour) in enumerate(zip(names, palette)):
        off = shown is not None and index not in shown
        style = "text-decoration:line-through;opacity:.45" if off else ""
        items.append(f'<span class="stpp-legend-item" data-class="{index}" style="margin-right:10px;{style}">'
                     f'<span style="display:inline-block;width:12px;height:12px;border:1px solid #444;'
                     f'background:{hex_colour(colour)};vertical-align:middle"></span> {html.escape(name)}</span>')
    return '<div class="stpp-legend">' + "".join(items) + "</div>"


def badge(reliable: bool | None) -> str:
    """``reliable`` / ``unreliable`` / ``not ranked``."""
    return "not ranked" if reliable is None else ("reliable" if reliable else "unreliable")


def project_names(services: Services) -> list[str]:
    """Every project's name."""
    return [p.name for p in list_projects(services.store)]


def find_project(services: Services, name: str | None) -> Project | None:
    """The named project, or None."""
    return next((p for p in list_projects(services.store) if p.name == name), None)


def run_label(run: Run) -> str:
    """``#3 ST++ (test) · awaiting review``."""
    return f"#{run.id} {METHOD_LABELS.get(run.method, run.method)} ({run.preset}) · {run.status.replace('_', ' ')}"


def project_runs(services: Services, project: str | None, methods: Sequence[str] | None = None) -> list[Run]:
    """The project's runs, newest first (only those of ``methods`` when given)."""
    try:
        runs = list_runs(services.store, project) if project else []
    except StoreError:
        return []
    return [r for r in runs if methods is None or r.method in methods]


def run_choices(services: Services, project: str | None, current: int | None = None, preferred: int | None = None,
                methods: Sequence[str] | None = None, only: Sequence[int] | None = None):
    """A run dropdown update: the project's runs (those in ``only`` when given), selecting ``preferred``
    (the page's current run) when it is one of them, else ``current`` when it is, else the newest."""
    runs = [r for r in project_runs(services, project, methods) if only is None or r.id in only]
    value = first_listed([r.id for r in runs], preferred, current)
    return gr.update(choices=[(run_label(r), r.id) for r in runs], value=value)


def first_listed(ids: Sequence[int], *wanted: int | None) -> int | None:
    """The first of ``wanted`` that is in ``ids``, else the first of ``ids`` (the newest run), else None."""
    return next((run_id for run_id in wanted if run_id in ids), ids[0] if ids else None)


def run_dropdown(**kwargs) -> gr.Dropdown:
    """A run dropdown, built empty (each page fills it with its project's runs).

    Custom values are allowed so API callers (``gradio_client``), who never see a page's choices,
    may name any run id, as :meth:`Services.project_picker` does for projects; handlers read the
    value with :func:`chosen_run` and the store refuses a run that does not exist.

    Args:
        kwargs: more ``gr.Dropdown`` arguments (``label``, ``elem_id``, ``scale`` ...).
    """
    return gr.Dropdown([], value=None, allow_custom_value=True, **kwargs)


def run_picker(services: Services, **kwargs) -> tuple[gr.Dropdown, gr.State]:
    """A run dropdown (:func:`run_dropdown`) whose pick becomes the page's current run, and goes into the
    page's address (``?run=ID``).

    Returns the dropdown and the page's current-run state (a state of its own for a tab built
    outside a page); a tab passes the state as ``preferred`` to :func:`run_choices` when it fills
    its list, so the run picked in one tab is the one the others open on, and a reload keeps it.
    """
    picker = run_dropdown(**kwargs)
    current = services.current_run if services.current_run is not None else gr.State(None)
    picker.input(lambda value: chosen_run(value) or gr.skip(), inputs=picker, outputs=current,
                 api_visibility="private")
    # The browser holds the dropdown's value, not the state's: the address is written from the pick.
    picker.input(None, inputs=picker, js=RUN_JS, api_visibility="private")
    return picker, current


def chosen_run(value) -> int | None:
    """The run id a run dropdown holds, or None for none (empty, 0, or text that is no id)."""
    try:
        return int(value) or None
    except (TypeError, ValueError):
        return None


def enlarge(picture, min_width: int = 480):
    """A small picture scaled up by a whole factor (nearest neighbour) so that it is at least ``min_width`` wide.

    Masks stay crisp, and every shown pixel is exactly one pixel of the original.
    """
    if picture is None:
        return None
    factor = max(1, -(-min_width // max(1, picture.shape[1])))
    return picture if factor == 1 else picture.repeat(factor, axis=0).repeat(factor, axis=1)


def done_note(run_id: int, what: str) -> str:
    """A confirmation that says what was done and when, not the run's status, which moves on (the
    status line beside it does): ``Run 3 launched at 15:12:04.``"""
    return f"Run {run_id} {what} at {time.strftime('%H:%M:%S')}."
