"""Everything between training phases and after them, for a person in the app: decisions on pseudo
masks and the pauses they happen in (:mod:`~stpp.review.decisions`), the ranked gallery and its
views (:mod:`~stpp.review.views`), the pseudo-mask quality report (:mod:`~stpp.review.quality`),
exports and predictions (:mod:`~stpp.review.outputs`), and the gallery's benchmark
(``python -m stpp.bench gallery``). Nothing here imports torch.
"""
