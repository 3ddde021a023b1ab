"""The app's child processes (model export, prediction, the teacher pass) end as an OutputError the
tabs show, also when one runs past its limit, and report the progress of their tqdm bar."""

from __future__ import annotations

import sys

import pytest

from stpp.services import outputs


def test_a_child_past_its_limit_is_stopped_with_an_output_error():
    with pytest.raises(outputs.OutputError, match=r"stopped after 1 s: python -m timeit -n 1 -r 1 import time"):
        outputs._child([sys.executable, "-m", "timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"],
                       timeout_s=1)


def test_a_failed_child_gives_its_last_line():
    with pytest.raises(outputs.OutputError, match="^no such thing$"):
        outputs._child([sys.executable, "-c", "import sys; print('working'); sys.exit('error: no such thing')"])


def test_the_childs_tqdm_bar_is_followed():
    seen: list[tuple[int, int]] = []
    outputs._child([sys.executable, "-c", "import time\nfrom tqdm import tqdm\n"
                    "for _ in tqdm(range(4), desc='teacher signals', unit='image', mininterval=0):\n"
                    "    time.sleep(0.7)"], on_progress=lambda done, total: seen.append((done, total)))
    assert seen and seen == sorted(seen) and {total for _, total in seen} == {4}
    assert len(seen) >= 2 and seen[-1] == (4, 4)  # the bar's end is reported once the child is done
