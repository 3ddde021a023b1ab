"""The training worker: one project run, trained from its run folder by the same pipeline as
``python -m stpp run``; it never opens the store.

``python -m stpp worker RUN_DIR`` (what the local backend spawns and a Slurm job script runs)
calls :func:`worker_main`. The app writes the run's order into the folder first (``job.json``:
the config, the images per role with their files, the review decisions, the next pause point;
see :mod:`stpp.core.handoff`). The worker takes the folder's lock, trains into it and reports in
``status.json`` (a heartbeat with the progress, then done, failed, cancelled or paused); the app
imports the folder into the store (:mod:`stpp.services.run_import`). A run over several GPUs or
CPU processes runs under ``torchrun`` (``python -m torch.distributed.run ... -m stpp.worker
RUN_DIR``): every rank reads the same ``job.json`` and trains (DDP), and rank 0 alone reports.

A stop file in the folder (the app's cancel), SIGTERM (to every rank under torchrun) or Ctrl-C
stops it cleanly after the current step (under torchrun a labelling or evaluation pass finishes
first): state ``cancelled``. An exception ends it ``failed`` with the error. Started again, it
continues from what the run folder holds.

The module also answers a question for processes that must not import torch: ``--list-devices``
(the visible GPUs, JSON).
"""
