"""The app's services: what a person does with a project between and after training phases.

- :mod:`~stpp.services.review`: decisions on pseudo masks, the pauses they happen in, continuing a
  paused run and what its next phase trains on;
- :mod:`~stpp.services.gallery`: the ranked gallery, its thumbnails and an image's detail view;
- :mod:`~stpp.services.quality`: the pseudo-mask quality report;
- :mod:`~stpp.services.outputs`: dataset and model exports, predictions on new images.

The Gradio tabs and the project CLI call these same functions. Nothing here imports torch: work that
needs it (model export, prediction) runs in a child process.
"""
