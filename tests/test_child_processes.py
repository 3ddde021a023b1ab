"""The app's child processes (model export, prediction, the teacher pass) end as an OutputError the
tabs show, also when one runs past its limit."""

from __future__ import annotations

import sys

import pytest

from stpp.services import outputs


def test_a_child_past_its_limit_is_stopped_with_an_output_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(outputs, "CHILD_TIMEOUT_S", 1)
    with pytest.raises(outputs.OutputError, match=r"stopped after 1 s: python -m timeit -n 1 import time"):
        outputs._child([sys.executable, "-m", "timeit", "-n", "1", "import time; time.sleep(60)"])


def test_a_failed_child_gives_its_last_line():
    with pytest.raises(outputs.OutputError, match="^no such thing$"):
        outputs._child([sys.executable, "-c", "import sys; print('working'); sys.exit('error: no such thing')"])
