"""The torch-free core: what the engine and the app must agree on, defined once.

``config`` (typed config, presets, the choice words), ``method`` (methods, stages, pause points,
the reliable count, the lr rule), ``events`` (progress events and the typed :class:`Activity` their
stage names), ``layout`` (the workspace default and the run folder), ``classes`` (class names and
palettes), ``masks`` (mask and image I/O, atomic writes, overlays), ``devices`` (a run's device
setting), ``metrics`` (numpy confusion matrix and IoU), ``teacher_signals`` (the final teacher's
per-image signals file), ``label_order`` (the orders of the "label these next" queue) and ``units``
(sizes for people).

Both sides import it; it imports neither, and nothing heavier than numpy and Pillow.
"""
