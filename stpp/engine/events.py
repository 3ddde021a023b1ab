"""Progress events: what the engine reports instead of printing.

The engine calls ``sink.emit(Event(...))``. A headless run writes ``events.jsonl``; the CLI adds a
tqdm bar; a project run (the worker) also records events in the store. Sinks compose.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run.

    Attributes:
        kind: ``run_start``, ``stage_start``, ``step``, ``epoch``, ``checkpoint``, ``eval``,
            ``labels``, ``ranking``, ``stage_end``, ``run_end``, ``warning`` or ``info``.
        stage: ``teacher``, ``st``, ``stage1``, ``stage2``, ``stage3`` (or empty for run-level events).
        step: progress within the stage (steps, or images when labelling).
        total: the step count that completes the stage's current phase.
        loss: training loss, when there is one.
        miou: validation mIoU in percent, when there is one.
        message: a sentence for people.
        data: anything else worth keeping (JSON-serialisable).
    """

    kind: str
    stage: str = ""
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    miou: float | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, "", {})})


class EventSink(Protocol):
    """Anything that accepts events."""

    def emit(self, event: Event) -> None: ...


class NullSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        pass


class JsonlSink:
    """Appends events to a JSON-lines file, one line per event, flushed as they come."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: Event) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(event.to_json() + "\n")


class MultiSink:
    """Forwards each event to several sinks."""

    def __init__(self, sinks: Iterable[EventSink]):
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)


class ListSink:
    """Keeps events in memory (for callers that inspect them afterwards)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl`` file as dicts (a torn last line is skipped)."""
    events = []
    path = Path(path)
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
