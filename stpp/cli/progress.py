"""Progress on stderr through tqdm: a headless run's events (:class:`TqdmSink`).

Imports neither torch nor the store, so both the engine's and the project's commands use it.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from stpp.core.events import Event

LINE_KINDS = ("run_start", "stage_start", "stage_skipped", "eval", "ranking", "warning", "info", "run_end")
"""Event kinds shown as a line of their own."""


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

