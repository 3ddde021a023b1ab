"""Progress on stderr through tqdm: a headless run's events (:class:`TqdmSink`) and a followed
project run (:class:`RunBar`).

Imports neither torch nor the store, so both the engine's and the project's commands use it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterable

from tqdm import tqdm

from stpp.core.events import Event

if TYPE_CHECKING:
    from stpp.store.runs import Run, RunEvent

LINE_KINDS = ("run_start", "stage_start", "stage_skipped", "eval", "ranking", "warning", "info", "run_end")
"""Event kinds shown as a line of their own."""
RUN_LINE_KINDS = (*LINE_KINDS, "worker_start", "requeued", "cancel_requested", "paused", "error")
"""Event kinds a followed project run shows as lines: also its worker's starts, requests and pauses."""


def event_line(stage: str, message: str) -> str:
    """One event as a line: ``[stage] message`` (``[run]`` when it names no stage)."""
    return f"[{stage or 'run'}] {message}"


class TqdmSink:
    """Shows step and labelling events as tqdm bars and the rest as lines (on stderr)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.key: tuple[str, str] | None = None

    def emit(self, event: Event) -> None:
        """Show one event."""
        if event.kind in ("step", "labels", "eval_progress") and event.total:
            key = (event.kind, event.stage)
            if key != self.key:
                self.close()
                label = {"step": "train", "labels": "label", "eval_progress": "eval"}[event.kind]
                self.bar = tqdm(total=event.total, desc=f"{event.stage or label} {label}",
                                unit="step" if label == "train" else "img", leave=False, file=sys.stderr,
                                dynamic_ncols=True)
                self.key = key
            if event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)
            self.bar.update((event.step or 0) - self.bar.n)
        elif event.kind in LINE_KINDS:
            self.close()
            tqdm.write(event_line(event.stage, event.message), file=sys.stderr)

    def close(self) -> None:
        """Close the open bar, if any."""
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None


class RunBar:
    """A project run followed from the store: its progress over the whole run as one bar (percent),
    its status and stage beside it, and its notable events as lines above it (on stderr)."""

    def __init__(self) -> None:
        self.bar = tqdm(total=100, unit="%", leave=False, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")

    def show(self, run: Run, events: Iterable[RunEvent] = ()) -> None:
        """Show the run as it is now, after the lines of its ``events`` (those not yet shown)."""
        for event in events:
            if event.kind in RUN_LINE_KINDS:
                self.bar.write(event_line(event.stage, event.message), file=sys.stderr)
        self.bar.set_description_str(f"run {run.id} {run.stage or ''}".rstrip(), refresh=False)
        self.bar.set_postfix_str(run.status.replace("_", " "), refresh=False)
        self.bar.update(run.progress * 100 - self.bar.n)

    def close(self) -> None:
        """Take the bar off the terminal."""
        self.bar.close()
