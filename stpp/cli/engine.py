"""The engine commands, ``run``, ``eval`` and ``predict``: headless runs on a dataset, without the store.

They call the same engine functions as the app's jobs; this module loads torch, so
:mod:`stpp.cli.main` imports it only for these commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from dataclasses import replace

from stpp.cli.output import EXIT_INTERRUPTED, EXIT_OK, usage_error
from stpp.cli.progress import TqdmSink
from stpp.core.classes import DataError
from stpp.core.config import ConfigError
from stpp.core.events import Event
from stpp.core.layout import RunLayout
from stpp.core.runlock import RunFolderBusy, RunFolderLock
from stpp.engine.autobatch import auto_batch_size
from stpp.engine.device import configure_cpu_threads, resolve_device
from stpp.engine.distributed import init_distributed, is_main, run_on_main, shutdown_distributed
from stpp.engine.signals import StopFlag
from stpp.engine.train import StopRequested
from stpp.headless import (
    RunError,
    check_run_dir,
    describe_inputs,
    evaluate_run,
    load_folder_run_data,
    predict_folder,
    prepare_run_dir,
    resolve_config,
    run_headless,
)
from stpp.models import WeightsError


def run_engine_command(args: argparse.Namespace) -> int:
    """Run a parsed ``run``, ``eval`` or ``predict`` command; returns the exit code (bad input: one line, 2)."""
    configure_cpu_threads()
    try:
        if args.command == "run":
            return _run(args)
        device = resolve_device(args.device)
        layout = RunLayout(args.run_dir)
        sink = TqdmSink()
        if args.command == "eval":
            result = evaluate_run(layout, args.data, args.split, args.stage, device, sink)
            sink.close()
            print(json.dumps(result, indent=2))
        else:
            written = predict_folder(layout, args.images, args.out, args.stage, args.tta, device, sink)
            sink.close()
            print(f"wrote {len(written)} masks to {args.out}")
        return EXIT_OK
    except (ConfigError, DataError, RunError, RunFolderBusy, WeightsError, ValueError, FileNotFoundError) as error:
        return usage_error(error)


def _run(args: argparse.Namespace) -> int:
    data = load_folder_run_data(args.data, args.labeled, args.unlabeled, args.val)
    cfg = resolve_config(args.preset, args.method, args.overrides, args.device, data.classes)
    device = init_distributed(cfg.device)
    try:
        return _run_joined(args, data, cfg, device)
    finally:
        shutdown_distributed()


def _run_joined(args: argparse.Namespace, data, cfg, device) -> int:
    """The rest of ``run`` once this process is in its group (every rank of a torchrun job runs it)."""
    notes = []
    if args.auto_batch:
        cfg, note = _auto_batch(args, cfg, device, data.classes.num_classes)
        notes.append(note)
    inputs = describe_inputs(args.data, data)
    # A refused --out gets nothing, not even a lock file.
    run_on_main(lambda: check_run_dir(args.out, cfg, inputs, args.resume))
    with ExitStack() as held:
        # Rank 0 alone writes the run folder, so it alone owns it; the others learn of a refusal.
        run_on_main(lambda: held.enter_context(RunFolderLock(args.out)) and None)
        layout = run_on_main(lambda: prepare_run_dir(args.out, cfg, inputs, args.resume))
        return _run_locked(args, data, cfg, device, layout, notes)


def _run_locked(args: argparse.Namespace, data, cfg, device, layout: RunLayout, notes: list[Event]) -> int:
    """Train into the run folder this job owns, and report."""
    sink = TqdmSink() if is_main() else None
    try:
        metrics = run_headless(cfg, data, layout, device, sink, should_stop=StopFlag(), notes=notes,
                               pause_after=args.until)
    except StopRequested:
        if sink is not None:
            sink.close()
            print(f"stopped; continue with the same command and --resume (state in {layout.last_path})",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if sink is not None:
        sink.close()
        paused = {"paused_after": metrics["paused_after"]} if "paused_after" in metrics else {}
        print(json.dumps({"run": str(layout.root), **paused,
                          "metrics": {s: (m or {}).get("miou") for s, m in metrics["stages"].items()}}))
    return EXIT_OK


def _auto_batch(args: argparse.Namespace, cfg, device, num_classes: int):
    """``--auto-batch``: a resumed run keeps the batch its config.json records; a new one probes."""
    saved = RunLayout(args.out).config_path
    if args.resume and saved.exists():
        batch = json.loads(saved.read_text()).get("optim", {}).get("batch_size", cfg.optim.batch_size)
        cfg = replace(cfg, optim=replace(cfg.optim, batch_size=int(batch)))
        return cfg, Event("info", message=f"--auto-batch: resuming with the batch of {saved.name} ({batch})")
    return auto_batch_size(cfg, device, num_classes)
