"""The final teacher's probability signals of a run's ranked images (:mod:`stpp.core.teacher_signals`),
computed where the run folder lacks them: the one pass of the teacher that the lowest-confidence label
order and the ranking study's probability signals read.

Torch is imported only when there is something to compute, so the app's process can ask what is
missing (:func:`missing_teacher_signals`) without it; the app computes them in a child
``python -m stpp project teacher-signals RUN_ID``.
"""

from __future__ import annotations

from collections.abc import Callable

from stpp.core.teacher_signals import read_teacher_signals
from stpp.store.db import Store
from stpp.store.images import image_paths_by_name
from stpp.store.projects import get_project
from stpp.store.ranking import ranks_by_name
from stpp.store.runs import get_run, run_layout


def missing_teacher_signals(store: Store, run_id: int) -> list[str]:
    """The names of the run's ranked images whose signals its run folder does not keep yet."""
    known = read_teacher_signals(run_layout(store, get_run(store, run_id)))
    return sorted(name for name in ranks_by_name(store, run_id) if name not in known)


def compute_teacher_signals(store: Store, run_id: int, device: str = "auto",
                            on_image: Callable[[int, int], None] | None = None) -> int:
    """Compute the signals of the run's ranked images that lack them; returns how many were computed.

    Args:
        device: where the teacher runs (``auto``, ``cpu``, ``cuda:N``).
        on_image: called with (images done, images to compute) after each one.

    Raises:
        StoreError: no such run.
        FileNotFoundError: the run has no final teacher checkpoint.
    """
    run = get_run(store, run_id)
    missing = missing_teacher_signals(store, run.id)
    if not missing:
        return 0
    from stpp.engine.device import resolve_device
    from stpp.selftrain.probability_signals import teacher_signals

    paths = image_paths_by_name(store, get_project(store, run.project_id))
    teacher_signals(run_layout(store, run), run.cfg, {name: store.path(paths[name]) for name in missing},
                    resolve_device(device), on_image=on_image)
    return len(missing)
