"""``python -m stpp project launch|runs|follow|cancel|resume|continue|label-next|teacher-signals|review|
import-run``: a project's runs from the command line, through the functions the app calls
(:class:`~stpp.jobs.JobRunner`, :mod:`stpp.services.review`, :mod:`stpp.services.label_queue`,
:mod:`stpp.services.teacher_signals` and :mod:`stpp.services.run_copy`).

Subcommands (each takes ``--workspace DIR``)::

    launch NAME --method M --preset P [--set key=value ...] [--device D] [--review]
    runs NAME [--json]
    follow RUN_ID
    cancel RUN_ID | resume RUN_ID
    continue RUN_ID [--reliable-ratio R] [--no-more-review]
    label-next RUN_ID [--count N] --out FILE.zip [--order least-stable|lowest-confidence] [--device D]
    teacher-signals RUN_ID [--device D]
    review RUN_ID IMAGE {accept,reject,correct} [--mask FILE.png] [--user U]
    import-run NAME RUN_DIR

Each prints the run's status line on stdout. ``follow`` ticks the queue while it shows the run's
progress (a tqdm bar on stderr) and exits 0 once the run is done or awaits review, 1 when it failed
and 130 when it was cancelled. ``label-next`` writes the run's N least stable images still unlabelled
(or those of lowest teacher confidence) as a CVAT task zip; ``project import-labels`` brings the
labelled result back as ground truth. Torch stays out of this process, the config check and the
training run in child processes, except where the final teacher runs: ``teacher-signals``, and
``label-next --order lowest-confidence`` on a run without them yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from stpp.cli.backend_args import backend_from_args, run_settings_from_args
from stpp.cli.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, print_table
from stpp.cli.progress import RunBar
from stpp.cli.project_args import REVIEW_CHOICES
from stpp.core.label_order import LABEL_ORDERS, needs_teacher_signals
from stpp.core.masks import read_mask
from stpp.jobs import JobRunner
from stpp.services.label_queue import export_label_task
from stpp.services.review import ReviewError, continue_run, pauses_reached, record_decision
from stpp.services.run_copy import import_run_copy
from stpp.services.teacher_signals import compute_teacher_signals, missing_teacher_signals
from stpp.store import Store, StoreError
from stpp.store.projects import get_project
from stpp.store.runs import Run, get_run, list_events, list_runs, run_layout, run_metrics

FOLLOW_EXIT_CODES = {"done": EXIT_OK, "awaiting_review": EXIT_OK, "failed": EXIT_FAILED,
                     "cancelled": EXIT_INTERRUPTED}
"""Where ``follow`` stops, and the exit code of each."""


def run_row(run: Run) -> dict[str, Any]:
    """A run's status as ``project status --json`` lists it."""
    return {"id": run.id, "method": run.method, "status": run.status, "stage": run.stage, "progress": run.progress,
            "resumable": run.resumable}


def status_line(store: Store, run: Run) -> str:
    """One line on a run, e.g. ``run 3 (st++, test): running, stage teacher, 40%``, with where it paused
    or why it failed."""
    state = [run.status.replace("_", " "), *([f"stage {run.stage}"] if run.stage else []), f"{run.progress:.0%}"]
    line = f"run {run.id} ({run.method}, {run.preset}): {', '.join(state)}"
    if run.status == "awaiting_review":
        pauses = pauses_reached(store, run.id)
        line += f"; paused after {pauses[-1] if pauses else 'a stage'} for review (then: project continue {run.id})"
    if run.error:
        line += f"; {' '.join(run.error.split())}"
    return line


def _launch(store: Store, args: argparse.Namespace) -> int:
    runner = JobRunner(store, backend=backend_from_args(args, store.workspace))
    # Kept in the run's row, so that a resume from the app submits it the same way.
    settings = run_settings_from_args(args) if runner.backend.queues_itself else None
    run = runner.launch(args.name, args.method, args.preset, args.overrides, args.device, review=args.review,
                        backend_options=settings)
    print(status_line(store, run))
    return EXIT_OK


def _runs(store: Store, args: argparse.Namespace) -> int:
    project = get_project(store, args.name)
    JobRunner(store).tick()  # what the runs' folders hold since the last look, and the queue moved on
    runs = list(reversed(list_runs(store, project)))
    metrics = {run.id: run_metrics(store, run.id) for run in runs}
    if args.json:
        print(json.dumps([{**run_row(run), "preset": run.preset, "val_miou": metrics[run.id]} for run in runs],
                         indent=2))
        return EXIT_OK
    if not runs:
        print(f"project {project.name!r} has no runs")
        return EXIT_OK
    print_table(("run", "method", "preset", "status", "stage", "progress", "val mIoU"),
                [(run.id, run.method, run.preset or "", run.status, run.stage or "", f"{run.progress:.0%}",
                  _last_miou(metrics[run.id])) for run in runs])
    return EXIT_OK


def _last_miou(metrics: dict[str, float | None]) -> str:
    """The latest evaluated stage's validation mIoU, as ``42.1 (stage2)``; empty when none."""
    scored = [(stage, miou) for stage, miou in metrics.items() if miou is not None]
    return f"{scored[-1][1]:.1f} ({scored[-1][0]})" if scored else ""


def _follow(store: Store, args: argparse.Namespace) -> int:
    get_run(store, args.run_id)  # an unknown run is an error before any bar is drawn
    bar = RunBar()
    try:
        run = JobRunner(store).wait(args.run_id, None, statuses=tuple(FOLLOW_EXIT_CODES),
                                    on_poll=_shown_on(bar, store, args.run_id))
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped following run {args.run_id}; it goes on (follow it again, or cancel it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    print(status_line(store, run))
    return FOLLOW_EXIT_CODES[run.status]


def _shown_on(bar: RunBar, store: Store, run_id: int) -> Callable[[Run], None]:
    """What ``follow`` does on each poll: show the run and the events recorded since the last poll,
    starting with those since the run was last queued (launched, resumed or continued)."""
    queued_again = list_events(store, run_id, limit=1, kinds=["requeued"])
    last_shown = queued_again[-1].id if queued_again else 0

    def show(run: Run) -> None:
        nonlocal last_shown
        events = list_events(store, run.id, after_id=last_shown)
        if events:
            last_shown = events[-1].id
        bar.show(run, events)

    return show


def _cancel(store: Store, args: argparse.Namespace) -> int:
    run = JobRunner(store).cancel(args.run_id)
    stopping = "; asked to stop after its current step" if run.status == "running" else ""
    print(status_line(store, run) + stopping)
    return EXIT_OK


def _resume(store: Store, args: argparse.Namespace) -> int:
    print(status_line(store, JobRunner(store).resume(args.run_id)))
    return EXIT_OK


def _continue(store: Store, args: argparse.Namespace) -> int:
    run = continue_run(JobRunner(store), args.run_id, reliable_ratio=args.reliable_ratio,
                       review_next=not args.no_more_review)
    print(status_line(store, run))
    return EXIT_OK


def _import_run(store: Store, args: argparse.Namespace) -> int:
    report = import_run_copy(store, args.name, args.run_dir)
    print(f"{status_line(store, report.run)}; imported from {args.run_dir} into {report.run.run_dir}: "
          f"{report.events} events, {report.scores} scores, {report.pseudo_masks} pseudo masks")
    return EXIT_OK


def _label_next(store: Store, args: argparse.Namespace) -> int:
    if needs_teacher_signals(args.order):
        compute_with_progress_bar(store, args.run_id, args.device)
    task = export_label_task(store, args.run_id, args.out, args.count, args.order)
    project = get_project(store, get_run(store, args.run_id).project_id)
    print(f"wrote {task.path}: {len(task.images)} images to label, {LABEL_ORDERS[task.order]} "
          f"({', '.join(image.name for image in task.images)})")
    print(f"once labelled: python -m stpp project import-labels {project.name} --data LABELLED.zip")
    return EXIT_OK


def _teacher_signals(store: Store, args: argparse.Namespace) -> int:
    computed = compute_with_progress_bar(store, args.run_id, args.device)
    print(f"run {args.run_id}: teacher signals of {computed} image(s) computed, "
          f"kept in {run_layout(store, get_run(store, args.run_id)).teacher_signals_path}")
    return EXIT_OK


def compute_with_progress_bar(store: Store, run_id: int, device: str) -> int:
    """Compute the final teacher's signals of the run's ranked images that lack them, with a tqdm bar on
    stderr (torch is imported there, and nowhere else in this process); also the review benchmark's.

    Raises:
        StoreError: no such run, or no final teacher checkpoint.
    """
    run = get_run(store, run_id)
    with tqdm(total=len(missing_teacher_signals(store, run.id)), desc=f"teacher signals of run {run.id}",
              unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            return compute_teacher_signals(store, run.id, device, on_image=lambda done, total: bar.update(1))
        except FileNotFoundError:
            raise StoreError(f"run {run.id} has no final teacher checkpoint to compute its signals with") from None


def _review(store: Store, args: argparse.Namespace) -> int:
    mask = None if args.mask is None else _read_mask_file(args.mask)
    decision = record_decision(store, args.run_id, args.image, REVIEW_CHOICES[args.decision], mask=mask,
                               user=args.user)
    print(f"{decision.image}: {decision.decision} by {decision.user} (run {args.run_id})")
    return EXIT_OK


def _read_mask_file(path: Path) -> np.ndarray:
    """``--mask``: a class-index mask PNG.

    Raises:
        ReviewError: the file is missing or not an 8-bit grayscale or palette image.
    """
    try:
        return read_mask(path)
    except FileNotFoundError:
        raise ReviewError(f"{path}: no such mask file") from None
    except ValueError as error:  # names the file already
        raise ReviewError(str(error)) from None
    except OSError:
        raise ReviewError(f"{path}: not a readable image") from None


RUN_COMMANDS = {"launch": _launch, "runs": _runs, "follow": _follow, "cancel": _cancel, "resume": _resume,
                "continue": _continue, "label-next": _label_next, "teacher-signals": _teacher_signals,
                "review": _review, "import-run": _import_run}
"""The handlers of the run subcommands, by name (:func:`stpp.cli.projects.run_project_command` runs them)."""
