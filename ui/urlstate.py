"""The page's place in its address: ``?project=NAME&tab=ID&run=ID``.

The open project, tab and run are written into the address bar as a person moves (``history.replaceState``:
no reload, no new history entry), and read back when a page loads, so a reload keeps the place and a
copied link opens the same project, tab and run. Values that name no project, tab or run of the project
are ignored.
"""

from __future__ import annotations

import json
from typing import Iterable

import gradio as gr

PROJECT_KEY = "project"
TAB_KEY = "tab"
RUN_KEY = "run"


PLACE_FLAG = "window.stppPlaceRead"
"""Set in the browser once the page has read its place from the address: until then nothing writes it
(the tabs report the first tab selected as they mount, before the page's load event reads the address)."""
PLACE_READ_JS = f"() => {{ {PLACE_FLAG} = true; }}"
"""Browser code run after the load event that read the address."""


def _set_param_js(key: str, value_expression: str) -> str:
    name = json.dumps(key)
    return (f"(value) => {{ if (!{PLACE_FLAG}) return; const v = {value_expression}; "
            f"const url = new URL(window.location.href); if (v) url.searchParams.set({name}, v); "
            f"else url.searchParams.delete({name}); window.history.replaceState(null, '', url); }}")


PROJECT_JS = _set_param_js(PROJECT_KEY, "value")
"""Browser code run with a project picker's value: puts it in the address."""


RUN_JS = _set_param_js(RUN_KEY, "value ? String(value) : ''")
"""Browser code run with a run dropdown's value (a run id, or none): puts it in the address, or takes it out."""


def tab_js(tab_id: str) -> str:
    """Browser code run when the tab ``tab_id`` is opened: puts it in the address."""
    return _set_param_js(TAB_KEY, json.dumps(tab_id))


def query_value(request: gr.Request | None, key: str, allowed: Iterable[str]) -> str | None:
    """The page address's ``key`` parameter when it is one of ``allowed``, else None."""
    params = getattr(request, "query_params", None) if request is not None else None
    value = params.get(key) if params is not None else None
    return value if value in set(allowed) else None
