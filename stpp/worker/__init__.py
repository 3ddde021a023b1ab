"""The training worker: one project run, read from the store, trained by the same pipeline as
``python -m stpp run``, with its progress recorded in the store.

``python -m stpp worker RUN_ID --workspace W`` (what the job runner spawns) and
``python -m stpp.worker RUN_ID ...`` call :func:`worker_main`. A run over several GPUs or CPU
processes runs it under ``torchrun`` (``python -m torch.distributed.run ... -m stpp.worker RUN_ID``):
every rank trains (DDP), and rank 0 alone opens the store for writing: it claims the run under
torchrun's pid, prepares the inputs, hands them to the other ranks and records everything.

The worker builds :class:`RunData` from the project (labelled: role ``labelled`` with a
``ground_truth`` mask; unlabelled: role ``unlabelled``, never with a mask, so ``reference`` masks
are never read; validation: role ``validation``), trains into ``WORKSPACE/runs/<run_id>/`` and
records events, checkpoints, scores and pseudo masks through a
:class:`~stpp.worker.sink.StoreSink`. The project's latest review decisions become the run's
``reviewed`` and ``rejected`` images (:func:`with_reviews`); a run launched with review between
phases stops at its next pause point (:func:`stpp.services.review.next_pause`) with status
``awaiting_review``, and :func:`stpp.services.review.continue_run` queues it again. SIGTERM (to every rank
under torchrun) or a cancel recorded in the store stops it cleanly after the current step (under
torchrun a labelling or evaluation pass finishes first): status ``cancelled``, resumable. An
exception leaves it ``failed`` with the error, resumable. Run again (after a resume) it continues
from what the run folder holds.

The module also answers a question for processes that must not import torch: ``--list-devices``
(the visible GPUs, JSON).
"""
