"""The engine commands' arguments (``run``, ``eval``, ``predict``, ``worker``), apart from their handlers.

Imports neither torch nor the store: ``python -m stpp --help`` and the project commands build the
whole command line without loading either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stpp.core.config import METHODS, PRESETS
from stpp.core.method import STAGES, every_pause_point

ENGINE_COMMANDS = ("run", "eval", "predict")
"""The commands :func:`stpp.cli.engine.run_engine_command` runs in this process (``worker`` has its own entry)."""


def add_engine_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``run``, ``eval``, ``predict`` and ``worker`` to a CLI's subparsers."""
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
    add_overrides_argument(run)
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    run.add_argument("--resume", action="store_true", help="continue the run already in --out")
    run.add_argument("--until", choices=every_pause_point(), default=None,
                     help="stop for review after this point (the ranking, or a stage's re-labelling); "
                          "--resume continues")
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

    wk = commands.add_parser("worker", help="run a project run from its folder's job.json (started by the app)")
    wk.add_argument("run_dir", type=Path, help="the run folder (the app writes job.json there first)")


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``overrides``: the config overrides of ``run`` and ``project launch``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=10 (repeatable)")
