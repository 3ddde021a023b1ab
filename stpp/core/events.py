"""Progress events: what the engine reports instead of printing.

The engine calls ``sink.emit(Event(...))``. A headless run writes ``events.jsonl``; the CLI adds a
tqdm bar; a project run (the worker) also records events in the store. Sinks compose.

An event's ``stage`` field names what it is about as text (``teacher``, ``stability2``,
``stability3+label:teacher``, ``label:stage1``, ``ranking``...). :class:`Activity` is the one
place that writes and reads that text: the engine builds an :class:`Activity` and the progress
mapper and the store sink read :attr:`Event.activity`; nothing else takes the text apart.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol

from stpp.core.method import RANKING, STAGES

ActivityKind = Literal["stage", "stability", "label", "ranking", "predict"]

_STABILITY = "stability"
_LABEL = "label:"
_PREDICT = "predict:"
_WITH = "+"


def _known(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return stage


@dataclass(frozen=True)
class Activity:
    """What a stage-level event is about.

    Attributes:
        kind: ``stage`` (training or evaluating a training stage), ``stability`` (one teacher
            checkpoint's single-scale masks), ``label`` (pseudo masks from a stage's final model) or
            ``ranking`` (the stability ranking); ``predict``: masks of new images from a finished run.
        stage: the training stage whose model works: the one trained (``stage``), the labeller
            (``label``, ``predict``), ``teacher`` for ``stability``; empty for ``ranking``.
        checkpoint: ``stability`` only: the teacher checkpoint j (1-based).
        labels_too: ``stability`` only: the pass also writes the teacher's final labels (the K-th
            checkpoint's pass when TTA or pixel selection makes them differ from its masks).
    """

    kind: ActivityKind
    stage: str = ""
    checkpoint: int = 0
    labels_too: bool = False

    @classmethod
    def training(cls, stage: str) -> "Activity":
        """Training (and evaluating) ``stage``."""
        return cls("stage", _known(stage))

    @classmethod
    def stability(cls, checkpoint: int, labels_too: bool = False) -> "Activity":
        """The masks of teacher checkpoint ``checkpoint`` (and, with ``labels_too``, the teacher's labels)."""
        if checkpoint < 1:
            raise ValueError(f"teacher checkpoints count from 1, not {checkpoint}")
        return cls("stability", "teacher", checkpoint, labels_too)

    @classmethod
    def labelling(cls, stage: str) -> "Activity":
        """Pseudo masks from the final model of ``stage``."""
        return cls("label", _known(stage))

    @classmethod
    def prediction(cls, stage: str) -> "Activity":
        """Masks of images outside the run from the final model of ``stage``."""
        return cls("predict", _known(stage))

    @classmethod
    def ranking(cls) -> "Activity":
        """The stability ranking."""
        return cls("ranking")

    @property
    def labelled_stage(self) -> str | None:
        """The stage whose pseudo masks this activity writes (None when it writes none)."""
        if self.kind == "label" or (self.kind == "stability" and self.labels_too):
            return self.stage
        return None

    def __str__(self) -> str:
        if self.kind == "stage":
            return self.stage
        if self.kind == "label":
            return _LABEL + self.stage
        if self.kind == "predict":
            return _PREDICT + self.stage
        if self.kind == "ranking":
            return RANKING
        text = f"{_STABILITY}{self.checkpoint}"
        return text + _WITH + _LABEL + self.stage if self.labels_too else text

    @classmethod
    def parse(cls, text: str) -> "Activity":
        """The activity an event's ``stage`` text names (the inverse of ``str``).

        Raises:
            ValueError: text no activity writes.
        """
        if text == RANKING:
            return cls.ranking()
        if text in STAGES:
            return cls.training(text)
        if text.startswith(_LABEL):
            return cls.labelling(text[len(_LABEL):])
        if text.startswith(_PREDICT):
            return cls.prediction(text[len(_PREDICT):])
        if text.startswith(_STABILITY):
            number, _, rest = text[len(_STABILITY):].partition(_WITH)
            if number.isdigit() and rest in ("", _LABEL + "teacher"):
                return cls.stability(int(number), labels_too=bool(rest))
        raise ValueError(f"not an activity: {text!r}")


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run.

    Attributes:
        kind: ``run_start``, ``stage_start``, ``step``, ``epoch``, ``checkpoint``, ``eval``,
            ``labels``, ``ranking``, ``stage_end``, ``run_end``, ``warning`` or ``info``.
        stage: what the event is about: an :class:`Activity` (kept as its text) or text that
            :meth:`Activity.parse` reads; empty for run-level events; a pause point for ``paused``.
        step: progress within the stage (steps, or images when labelling).
        total: the step count that completes the stage's current phase.
        loss: training loss, when there is one.
        miou: validation mIoU in percent, when there is one.
        message: a sentence for people.
        data: anything else worth keeping (JSON-serialisable).
    """

    kind: str
    stage: str | Activity = ""
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    miou: float | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if isinstance(self.stage, Activity):
            object.__setattr__(self, "stage", str(self.stage))
        elif self.stage and self.kind != "paused":
            Activity.parse(self.stage)  # refused here, where it is made, not by a reader mid-run

    @property
    def activity(self) -> Activity | None:
        """The :class:`Activity` named by ``stage``; None for run-level events and pauses."""
        if not self.stage or self.kind == "paused":
            return None
        return Activity.parse(self.stage)

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
