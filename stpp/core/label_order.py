"""The orders of the "label these next" queue, the one vocabulary of ``project label-next --order``, the
Review tab's task panel and :mod:`stpp.services.label_queue`.

- ``least-stable``: the run's ST++ ranking read from its unstable end (the default: the paper's signal,
  and every ranked run has it);
- ``lowest-confidence``: lowest mean top softmax probability of the final teacher first
  (:mod:`stpp.core.teacher_signals`; one pass of the teacher over the ranked images, kept in the run
  folder). On CamVid 1/8 it sorted the pseudo masks best of the signals studied (BENCHMARKS.md,
  the ranking study and the review grid).
"""

from __future__ import annotations

LEAST_STABLE = "least-stable"
LOWEST_CONFIDENCE = "lowest-confidence"
LABEL_ORDERS: dict[str, str] = {
    LEAST_STABLE: "least stable first",
    LOWEST_CONFIDENCE: "lowest teacher confidence first",
}
"""Each order, and the words a task's manifest and the messages describe it with."""


def parse_label_order(text: str) -> str:
    """The order ``text`` names.

    Raises:
        ValueError: an unknown order (the message lists the known ones).
    """
    if text not in LABEL_ORDERS:
        raise ValueError(f"unknown label order {text!r}; choose from: {', '.join(LABEL_ORDERS)}")
    return text


def needs_teacher_signals(order: str) -> bool:
    """Whether the order reads the final teacher's signals, which a run computes only on request."""
    return parse_label_order(order) == LOWEST_CONFIDENCE
