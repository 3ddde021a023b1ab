"""The ``project`` command's arguments, apart from its handlers.

``python -m stpp run`` builds the whole command line, so this module imports neither the store nor
torch: the engine's commands keep working where sqlite-utils is not installed (a bare GPU machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stpp.cli.backend_args import add_backend_arguments
from stpp.cli.engine_args import add_overrides_argument
from stpp.core.config import METHODS, PRESETS
from stpp.core.label_order import LABEL_ORDERS, LEAST_STABLE, LOWEST_CONFIDENCE

REVIEW_CHOICES = {"accept": "accepted", "reject": "rejected", "correct": "corrected"}
"""``project review``'s decisions: what is typed, and the decision recorded."""
ROLE_CHOICES = ("labelled", "unlabelled", "validation", "labeled", "unlabeled", "val")


def add_project_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``project`` command (and its subcommands) to a CLI's subparsers; returns its parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", type=Path, default=None,
                        help="workspace folder (default: $STPP_HOME, else ./workspace)")
    project = subparsers.add_parser("project", help="projects in the store: their data, their runs and reviews",
                                    description="Projects in the store (the workspace's stpp.db): create, "
                                                "import data or labels, list, status, export; launch runs, "
                                                "follow, cancel, resume and review them.")
    commands = project.add_subparsers(dest="project_command", required=True, metavar="SUBCOMMAND")

    create = commands.add_parser("create", parents=[common], help="create an empty project")
    create.add_argument("name")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes", type=Path, metavar="FILE", help="classes.json")
    source.add_argument("--labelmap", type=Path, metavar="FILE", help="VOC / CVAT labelmap.txt")
    source.add_argument("--class-names", metavar="A,B,C",
                        help="class names, comma-separated (name=#rrggbb sets a colour)")

    imp = commands.add_parser("import", parents=[common], help="import a folder dataset or a VOC layout")
    imp.add_argument("name")
    imp.add_argument("--data", required=True, type=Path, metavar="ROOT", help="folder dataset, VOC folder or VOC .zip")
    imp.add_argument("--labeled", type=Path, metavar="L", help="split list of labelled IDs (folder datasets)")
    imp.add_argument("--unlabeled", type=Path, metavar="U", help="split list of unlabelled IDs")
    imp.add_argument("--val", type=Path, metavar="V", help="split list of validation IDs")
    imp.add_argument("--in-place", action="store_true", help="register image files where they are (no copy)")
    imp.add_argument("--verbose", action="store_true", help="also list the files that were added")

    add = commands.add_parser("add", parents=[common], help="add images (with masks): files, folders, zips")
    add.add_argument("name")
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.add_argument("--role", required=True, choices=ROLE_CHOICES)
    add.add_argument("--in-place", action="store_true", help="register image files where they are (no copy)")
    add.add_argument("--verbose", action="store_true", help="also list the files that were added")

    labels = commands.add_parser("import-labels", parents=[common],
                                 help="add a VOC layout's masks (e.g. a CVAT export) as ground truth")
    labels.add_argument("name")
    labels.add_argument("--data", required=True, type=Path, metavar="ROOT", help="VOC folder or .zip")
    labels.add_argument("--verbose", action="store_true", help="also list the masks that were added")

    lst = commands.add_parser("list", parents=[common], help="every project with its counts")
    lst.add_argument("--json", action="store_true", help="machine-readable output")

    status = commands.add_parser("status", parents=[common], help="one project: classes, counts, runs, disk usage")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    export = commands.add_parser("export", parents=[common],
                                 help="export a project as a zip (voc, coco, masks, overlays)")
    export.add_argument("name")
    export.add_argument("--format", dest="fmt", default="voc", choices=("voc", "coco", "masks", "overlays"))
    export.add_argument("--out", type=Path, required=True, help="the zip file to write")
    export.add_argument("--run", type=int, default=None, help="take pseudo masks and scores from this run")
    export.add_argument("--stage", default=None, help="the latest stage whose pseudo masks to take")
    export.add_argument("--only", default=None, metavar="GROUPS",
                        help="keep only these groups: any of ground_truth,accepted,corrected,reliable,unreliable")
    export.add_argument("--min-stability", type=float, default=None)
    export.add_argument("--allow-unfinished", action="store_true",
                        help="export the pseudo masks of a run that failed, was cancelled or is still running")
    export.add_argument("--include-reference", action="store_true",
                        help="also export reference masks (ground truth of unlabelled images) as labels")

    predict = commands.add_parser("predict", parents=[common], help="masks for a folder of images from a project's run")
    predict.add_argument("name")
    predict.add_argument("--run", type=int, default=None, help="run id (default: the project's latest finished run)")
    predict.add_argument("--stage", default=None, help="default: the run's last finished stage")
    predict.add_argument("--images", type=Path, required=True)
    predict.add_argument("--out", type=Path, required=True)
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None)
    predict.add_argument("--device", default="auto")

    _add_run_parsers(commands, common)
    return project


def _add_run_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The verbs of a project's runs: launch, runs, follow, cancel, resume, continue, import-run, label-next,
    teacher-signals, review."""
    launch = commands.add_parser("launch", parents=[common], help="start a training run of a project (in the queue)")
    launch.add_argument("name")
    launch.add_argument("--method", required=True, choices=METHODS)
    launch.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    add_overrides_argument(launch)
    launch.add_argument("--device", default="auto",
                        help="auto (default: the first GPU, else the CPU), cpu, cuda:N, cuda:N,M (torchrun) or cpu*N")
    launch.add_argument("--review", action="store_true",
                        help="pause for review after the ranking and after each re-labelling (see 'project continue')")
    add_backend_arguments(launch)

    runs = commands.add_parser("runs", parents=[common], help="a project's runs: status, stage, progress, val mIoU")
    runs.add_argument("name")
    runs.add_argument("--json", action="store_true", help="machine-readable output")

    follow = commands.add_parser("follow", parents=[common],
                                 help="show a run's progress until it is done, failed, cancelled or awaits review")
    follow.add_argument("run_id", type=int)

    cancel = commands.add_parser("cancel", parents=[common], help="stop a run (it stays resumable)")
    cancel.add_argument("run_id", type=int)

    resume = commands.add_parser("resume", parents=[common], help="queue a failed or cancelled run again")
    resume.add_argument("run_id", type=int)

    carry_on = commands.add_parser("continue", parents=[common], help="queue a run that awaits review again")
    carry_on.add_argument("run_id", type=int)
    carry_on.add_argument("--reliable-ratio", type=float, default=None, metavar="R",
                          help="the reliable ratio for stage 1 (only at the ranking pause)")
    carry_on.add_argument("--no-more-review", action="store_true", help="run to the end without pausing again")

    copied = commands.add_parser("import-run", parents=[common],
                                 help="import a run folder made elsewhere (a cluster, 'python -m stpp run') as a run")
    copied.add_argument("name", help="the project the run trained on (same classes and images)")
    copied.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder (config.json, events.jsonl...)")
    label_next = commands.add_parser("label-next", parents=[common],
                                     help="the run's images a person should label next (least stable first), as a "
                                          "CVAT task zip (Segmentation mask 1.1, pseudo masks as pre-annotations)")
    label_next.add_argument("run_id", type=int)
    label_next.add_argument("--count", type=int, default=20, help="how many images (default: 20)")
    label_next.add_argument("--out", type=Path, required=True, help="the zip file to write")
    label_next.add_argument("--order", choices=tuple(LABEL_ORDERS), default=LEAST_STABLE,
                            help=f"{LEAST_STABLE} (default) or {LOWEST_CONFIDENCE}, which first runs the final "
                                 "teacher over the ranked images where the run has not kept its confidence")
    label_next.add_argument("--device", default="auto", help="where that teacher pass runs (default: auto)")

    signals = commands.add_parser("teacher-signals", parents=[common],
                                  help="compute the final teacher's confidence and TTA agreement of a run's ranked "
                                       "images (for label-next --order lowest-confidence and the ranking study)")
    signals.add_argument("run_id", type=int)
    signals.add_argument("--device", default="auto", help="auto (default), cpu or cuda:N")

    review = commands.add_parser("review", parents=[common], help="decide on a pseudo mask of a paused run")
    review.add_argument("run_id", type=int)
    review.add_argument("image", help="the image's name")
    review.add_argument("decision", choices=tuple(REVIEW_CHOICES))
    review.add_argument("--mask", type=Path, metavar="FILE.png",
                        help="correct: the corrected mask (8-bit grayscale or palette PNG of class indices)")
    review.add_argument("--user", default=None, help="who decides (default: local)")
