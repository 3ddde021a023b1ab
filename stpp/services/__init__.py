"""The app's services: what a person does with a project between and after training phases.

- :mod:`~stpp.services.review`: decisions on pseudo masks, the pauses they happen in, continuing a
  paused run and what its next phase trains on;
- :mod:`~stpp.services.gallery`: the ranked gallery, its thumbnails and an image's detail view;
- :mod:`~stpp.services.quality`: the pseudo-mask quality report;
- :mod:`~stpp.services.outputs`: dataset and model exports, predictions on new images;
- :mod:`~stpp.services.label_queue`: the images a person should label next, as a CVAT task;
- :mod:`~stpp.services.teacher_signals`: the final teacher's confidence of a run's ranked images.

The Gradio tabs and the project CLI call these same functions. Nothing here imports torch at import
time: work that needs it (model export, prediction, the teacher's signals) runs in a child process of
the app, or in the CLI's own (:func:`~stpp.services.teacher_signals.compute_teacher_signals`).
"""
