"""The command line: ``python -m stpp run|eval|predict|worker|project``.

Every command calls the same engine functions as the app; this module only parses arguments,
shows progress with tqdm and turns errors into one clear line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from stpp.core.classes import DataError
from stpp.core.config import METHODS, PRESETS, ConfigError
from stpp.core.events import Event
from stpp.core.layout import RunLayout
from stpp.core.method import STAGES, every_pause_point
from stpp.engine.autobatch import auto_batch_size
from stpp.engine.device import configure_cpu_threads, resolve_device
from stpp.engine.distributed import init_distributed, is_main, run_on_main, shutdown_distributed
from stpp.engine.signals import StopFlag
from stpp.engine.train import StopRequested
from stpp.models import WeightsError
from stpp.project_args import add_project_parser
from stpp.runs import (
    RunError,
    describe_inputs,
    evaluate_run,
    load_folder_run_data,
    predict_folder,
    prepare_run_dir,
    resolve_config,
    run_headless,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class TqdmSink:
    """Shows step and labelling events as tqdm bars and the rest as lines (on stderr)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.key: tuple[str, str] | None = None

    def emit(self, event: Event) -> None:
        if event.kind in ("step", "labels", "eval_progress") and event.total:
            key = (event.kind, event.stage)
            if key != self.key:
                self.close()
                label = {"step": "train", "labels": "label", "eval_progress": "eval"}[event.kind]
                self.bar = tqdm(total=event.total, desc=f"{event.stage or label} {label}", unit="step" if label == "train" else "img",
                                leave=False, file=sys.stderr, dynamic_ncols=True)
                self.key = key
            if event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.3f}", refresh=False)
            self.bar.update((event.step or 0) - self.bar.n)
        elif event.kind in ("run_start", "stage_start", "stage_skipped", "eval", "ranking", "warning", "info", "run_end"):
            self.close()
            tqdm.write(f"[{event.stage or 'run'}] {event.message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stpp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run",
                              help="train SupOnly / ST / ST++ on a dataset (headless; torchrun for several GPUs)")
    run.add_argument("--data", required=True,
                     help="folder dataset root (images/, masks/, classes.json), or voc:ROOT (Pascal VOC 2012 + "
                          "SegmentationClassAug) or cityscapes:ROOT (leftImg8bit/, gtFine/)")
    run.add_argument("--labeled", required=True, type=Path,
                     help="text file: one labelled image ID per line (voc/cityscapes: or the paper's pair lines)")
    run.add_argument("--unlabeled", type=Path, help="text file: one unlabelled image ID per line")
    run.add_argument("--val", type=Path, help="text file: validation IDs (optional)")
    run.add_argument("--method", choices=METHODS, default="st++")
    run.add_argument("--preset", default="pascal", help=f"one of: {', '.join(PRESETS)}")
    run.add_argument("--out", required=True, type=Path, help="run folder to create (or continue with --resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set optim.epochs=10 (repeatable)")
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    run.add_argument("--resume", action="store_true", help="continue the run already in --out")
    run.add_argument("--until", choices=every_pause_point(), default=None,
                     help="stop for review after this point (the ranking, or a stage's re-labelling); --resume continues")
    run.add_argument("--auto-batch", action="store_true",
                     help="on GPU: halve the preset's batch until a training step fits in memory (lr follows)")

    ev = commands.add_parser("eval", help="evaluate a finished run's model on a split (JSON)")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--data", required=True, type=Path)
    ev.add_argument("--split", required=True, type=Path, help="text file of IDs to evaluate on")
    ev.add_argument("--stage", default=None, help=f"{', '.join(STAGES)} (default: the last)")
    ev.add_argument("--device", default="auto")

    pr = commands.add_parser("predict", help="write palette-PNG masks for a folder of images")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("--images", required=True, type=Path)
    pr.add_argument("--out", required=True, type=Path)
    pr.add_argument("--stage", default=None)
    pr.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="test-time augmentation (default: as the run's config)")
    pr.add_argument("--device", default="auto")

    wk = commands.add_parser("worker", help="run a project's training run from the store (started by the app)")
    wk.add_argument("run_id", type=int)
    wk.add_argument("--workspace", type=Path, default=None, help="default: $STPP_HOME or ./workspace")

    add_project_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cpu_threads()
    if args.command == "worker":
        from stpp.worker.main import worker_main

        return worker_main(args.run_id, args.workspace)
    if args.command == "project":
        from stpp.project_cli import run_project_command

        return run_project_command(args)
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
        return 0
    except (ConfigError, DataError, RunError, WeightsError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


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
    layout = run_on_main(lambda: prepare_run_dir(args.out, cfg, describe_inputs(args.data, data), args.resume))
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
    return 0


def _auto_batch(args: argparse.Namespace, cfg, device, num_classes: int):
    """``--auto-batch``: a resumed run keeps the batch its config.json records; a new one probes."""
    saved = RunLayout(args.out).config_path
    if args.resume and saved.exists():
        batch = json.loads(saved.read_text()).get("optim", {}).get("batch_size", cfg.optim.batch_size)
        cfg = replace(cfg, optim=replace(cfg.optim, batch_size=int(batch)))
        return cfg, Event("info", message=f"--auto-batch: resuming with the batch of {saved.name} ({batch})")
    return auto_batch_size(cfg, device, num_classes)
