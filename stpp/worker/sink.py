"""The engine's events of a project run, recorded in the store as they come."""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Callable, Mapping

from stpp.core.events import Event
from stpp.core.layout import RunLayout
from stpp.core.method import RANKING
from stpp.store.db import Store, utc_now
from stpp.store.runs import (
    record_checkpoint,
    record_event,
    record_pseudo_masks,
    record_scores,
    set_stage_metrics,
    update_run,
)

log = logging.getLogger(__name__)

STEP_EVENT_INTERVAL_S = 1.0
"""Step events closer together than this are not recorded (the last step of a stage always is)."""


class StoreSink:
    """An :class:`~stpp.core.events.EventSink` that records a project run's progress in the store.

    Every event becomes an ``events`` row, except step events closer than
    :data:`STEP_EVENT_INTERVAL_S` to the last recorded one (a stage's last step is always kept).
    With each recorded event the run row's stage, progress and heartbeat are updated. ``checkpoint``
    events add ``checkpoints`` rows, ``eval`` events attach the mIoU to the stage's final checkpoint,
    the end of the ranking stores ``scores.csv``, and pseudo masks get ``masks`` rows as each
    labelling pass reports them.

    A store that stays locked beyond its busy timeout loses that event (logged), never the run.

    Args:
        store: the open store (the worker's).
        run_id: the run.
        layout: the run folder.
        image_ids: image name (the run's sample ids) to image row id.
        progress: maps an event to the progress over the whole run (0..1), or None when it says
            nothing new; the recorded progress never goes down.
        start_progress: the run's progress when this worker started: a continued or resumed run
            goes on from there, while its finished stages are skipped again.
        clock: seconds, for the step-event throttle (tests pass a fake one).
    """

    def __init__(self, store: Store, run_id: int, layout: RunLayout, image_ids: Mapping[str, int],
                 progress: Callable[[Event], float | None] | None = None, start_progress: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.run_id = int(run_id)
        self.layout = layout
        self.image_ids = dict(image_ids)
        self.progress_of = progress
        self.clock = clock
        self.progress = float(start_progress)
        self._last_step_at: float | None = None
        self._last_step_stage = ""

    def emit(self, event: Event) -> None:
        progress = self.progress_of(event) if self.progress_of is not None else None
        if progress is not None:
            self.progress = max(self.progress, min(1.0, progress))
        if not self._keep(event):
            return
        try:
            self._record(event)
        except sqlite3.OperationalError as error:
            log.warning("run %s: event %s not recorded: %s", self.run_id, event.kind, error)

    def _keep(self, event: Event) -> bool:
        if event.kind != "step":
            return True
        now = self.clock()
        last_of_stage = event.total is not None and event.step == event.total
        if (last_of_stage or self._last_step_at is None or event.stage != self._last_step_stage
                or now - self._last_step_at >= STEP_EVENT_INTERVAL_S):
            self._last_step_at, self._last_step_stage = now, event.stage
            return True
        return False

    def _record(self, event: Event) -> None:
        record_event(self.store, self.run_id, event)
        fields: dict[str, Any] = {"heartbeat": utc_now(), "progress": self.progress}
        if event.stage and event.kind != "stage_skipped":  # a finished stage passed again is not where the run is
            fields["stage"] = event.stage
        update_run(self.store, self.run_id, **fields)
        if event.kind == "checkpoint" and event.data.get("path"):
            record_checkpoint(self.store, self.run_id, event.stage, event.data["path"], event.data.get("epoch"))
        elif event.kind == "eval" and event.miou is not None:
            set_stage_metrics(self.store, self.run_id, event.stage, {"miou": event.miou})
        elif event.kind == "ranking" or (event.kind == "stage_skipped" and event.stage == RANKING):
            if self.layout.scores_path.exists():
                record_scores(self.store, self.run_id, self.layout.scores_path, self.image_ids)
        elif event.kind == "labels" and event.activity is not None and event.activity.labelled_stage:
            stage = event.activity.labelled_stage
            record_pseudo_masks(self.store, self.run_id, stage, self.layout.pseudo_dir(stage), self.image_ids)
        elif event.kind in ("stage_start", "run_end"):
            self.record_all_pseudo_masks()

    def record_all_pseudo_masks(self) -> int:
        """Record every pseudo mask in the run folder that has no row yet (masks copied, not predicted)."""
        root = self.layout.root / "pseudo"
        if not root.is_dir():
            return 0
        return sum(record_pseudo_masks(self.store, self.run_id, folder.name, folder, self.image_ids)
                   for folder in sorted(root.iterdir()) if folder.is_dir())
