"""What the UI's tabs are handed: the open store, the job runner and the app's settings (passed in, never global).

Also the page's *current project* and *current run*, shared by the tabs (see
:meth:`Services.follow_project` and :func:`ui.components.run_picker`), and the signed-in user
(:func:`signed_in_user`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from stpp.jobs import JobRunner
from stpp.store import DEMO_PROJECT, Store, list_projects
from stpp.store.runs import list_runs
from ui.urlstate import PROJECT_JS, PROJECT_KEY, RUN_KEY, query_value


@dataclass(frozen=True)
class Settings:
    """How the app was started.

    Attributes:
        host: the address the server binds.
        port: the port it listens on.
        workspace: the workspace folder (``STPP_HOME``).
        demo_dir: the shipped demo dataset, or None.
        download_ttl_s: how long Gradio keeps its copy of a file the app served (an export zip, a
            thumbnail) in its cache folder; it sweeps every quarter of that.
    """

    workspace: Path
    host: str = "127.0.0.1"
    port: int = 7860
    demo_dir: Path | None = None
    download_ttl_s: int = 3600

    @property
    def thumbnail_dir(self) -> Path:
        """Where the Data tab caches thumbnails; the app lets the browser fetch files from it."""
        return self.workspace / "cache" / "thumbnails"


@dataclass(frozen=True)
class Services:
    """Everything a tab's handlers may use.

    Attributes:
        store: the project store.
        settings: the app's settings.
        jobs: the job runner over ``store`` (one is made when none is given).
        current_project: the page's current project name (a ``gr.State``, one value per browser
            tab), set by :meth:`with_page_state`; None outside a page.
        current_run: the page's current run id (a ``gr.State``): the run a person last picked in any
            tab, which the other tabs show when they list it; None outside a page.
    """

    store: Store
    settings: Settings
    jobs: JobRunner = field(default=None)  # type: ignore[assignment]
    current_project: Any = None
    current_run: Any = None

    def __post_init__(self) -> None:
        if self.jobs is None:
            object.__setattr__(self, "jobs", JobRunner(self.store))

    def with_page_state(self) -> Services:
        """A copy that holds the page's current project and run; call it inside ``gr.Blocks``, before the tabs.

        On every page load they become the ones the page's address names (:meth:`opening_place`).
        """
        project, run = gr.State(None), gr.State(None)
        services = dataclasses.replace(self, current_project=project, current_run=run)
        # One event sets both, so the tabs filling their run lists on the project's change see the run.
        gr.on(triggers=None, fn=services.opening_place, outputs=[project, run], api_visibility="private")
        return services

    def opening_place(self, request: gr.Request) -> tuple[str | None, int | None]:
        """The project and run a page opens on: those its address names (``?project=NAME&run=ID``, a run
        of that project), else the default project and no run (each tab shows its newest)."""
        project = query_value(request, PROJECT_KEY, self.project_names()) or self.default_project()
        run_ids = [str(r.id) for r in list_runs(self.store, project)] if project else []
        run = query_value(request, RUN_KEY, run_ids)
        return project, int(run) if run else None

    def project_names(self) -> list[str]:
        """Every project's name, for pickers."""
        return [p.name for p in list_projects(self.store)]

    def default_project(self) -> str | None:
        """The demo project if it exists, else the first project by name, else None."""
        names = self.project_names()
        return DEMO_PROJECT if DEMO_PROJECT in names else (names[0] if names else None)

    def project_picker(self, **kwargs: Any) -> gr.Dropdown:
        """A project dropdown that follows the page's current project (see :meth:`follow_project`).

        It is built empty and filled on page load: choices baked in at build time would be stale,
        and would show in the API description that Gradio serves even on its sign-in page.
        Custom values are allowed so API callers may name any project; handlers check the name.

        Args:
            kwargs: more ``gr.Dropdown`` arguments (``label``, ``elem_id``, ``scale`` ...).
        """
        picker = gr.Dropdown([], value=None, allow_custom_value=True, **kwargs)
        self.follow_project(picker)
        return picker

    def follow_project(self, picker: gr.Dropdown) -> None:
        """Keep a tab's project dropdown and the page's current project in step, both ways.

        When the current project changes (opened on the Projects tab, or picked in another tab),
        ``picker`` shows it, with its choices re-read from the store; picking a project in
        ``picker`` makes it current for every tab. Does nothing without a current project.
        """
        state = self.current_project
        if state is None:
            return
        state.change(lambda name: gr.update(choices=self.project_names(), value=name), inputs=state,
                     outputs=picker, api_visibility="private")
        # Only a project that exists becomes current: the picker also takes typed names.
        picker.input(lambda name: name if name in self.project_names() else gr.skip(), inputs=picker, outputs=state,
                     api_visibility="private")
        picker.change(None, inputs=picker, js=PROJECT_JS, api_visibility="private")  # into the page's address


def signed_in_user(request: gr.Request | None) -> str | None:
    """The user signed in to the page that sent ``request`` (``--auth``), or None without sign-in.

    A handler gets ``request`` by declaring a parameter annotated ``gr.Request``; Gradio fills it
    in (it is not one of the event's inputs).
    """
    return getattr(request, "username", None) if request is not None else None
