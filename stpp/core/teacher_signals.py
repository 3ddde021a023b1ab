"""``RUN_DIR/teacher_signals.csv``: two ranking signals from the final teacher's probabilities.

A run keeps argmax masks only, so these take one more pass of the final teacher checkpoint over the
ranked images (:func:`stpp.selftrain.probability_signals.teacher_signals` computes them; this module,
torch-free, reads and writes the file for the ranking study, the store's report and the benchmarks):

- ``confidence``: the mean, over the image's pixels, of the top softmax probability the teacher's
  labels are taken from (the mean over the TTA views when ``pseudo.tta`` is on, else the plain view);
- ``tta_agreement``: the mean, over the TTA views (``pseudo.tta_scales`` x flips, whether or not the
  run labels with them), of the share of pixels where a view's argmax is the views' consensus (the
  argmax of their mean probabilities).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save

PROBABILITY_SIGNALS = ("confidence", "tta_agreement")
"""The signals of the file, in its column order (after ``id``)."""


def read_teacher_signals(layout: RunLayout) -> dict[str, dict[str, float]]:
    """The signals the run folder keeps, by image ID (empty when none were computed)."""
    if not layout.teacher_signals_path.exists():
        return {}
    with layout.teacher_signals_path.open(newline="") as handle:
        return {row["id"]: {name: float(row[name]) for name in PROBABILITY_SIGNALS} for row in csv.DictReader(handle)}


def write_teacher_signals(layout: RunLayout, signals: Mapping[str, Mapping[str, float]]) -> None:
    """Write every image's signals (sorted by ID), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", *PROBABILITY_SIGNALS])
    for image_id in sorted(signals):
        writer.writerow([image_id, *(f"{signals[image_id][name]:.6f}" for name in PROBABILITY_SIGNALS)])
    atomic_save(layout.teacher_signals_path, lambda tmp: Path(tmp).write_text(text.getvalue()))
