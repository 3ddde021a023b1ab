"""``python -m stpp project ...``: projects in the store, from the command line.

Data subcommands (each takes ``--workspace DIR``; default ``$STPP_HOME``, else ``./workspace``)::

    create NAME (--classes FILE | --labelmap FILE | --class-names a,b,c)
    import NAME --data ROOT [--labeled L --unlabeled U --val V] [--in-place]
    add NAME PATH... --role {labelled,unlabelled,validation} [--in-place]
    import-labels NAME --data ROOT
    list [--json]
    status NAME [--json]
    export NAME --format FMT --out FILE.zip [...]
    predict NAME --images DIR --out DIR [...]

``import`` reads a folder dataset (``ROOT/images``, ``ROOT/masks``, split lists) or a VOC layout
(``ROOT/JPEGImages``, folder or ``.zip``); it creates the project from the data's own classes when
it does not exist yet. ``add`` ingests any mix of images, masks, folders and zips. ``import-labels``
adds the masks of a VOC layout (a CVAT export) as ground truth to the project's images of the same
names. Imports print the files that failed (``--verbose``: every file) and a summary; they exit 1
when a file failed. Any other error is one line on stderr and exit code 2.

The run subcommands (launch, runs, follow, cancel, resume, continue, review) are in
:mod:`stpp.cli.project_runs`; :func:`run_project_command` runs both. Only ``predict`` loads torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stpp.cli.output import EXIT_FAILED, EXIT_OK, print_table, usage_error
from stpp.cli.project_runs import RUN_COMMANDS, run_row
from stpp.core.classes import DataError
from stpp.core.config import ConfigError
from stpp.core.layout import default_workspace
from stpp.core.units import format_bytes
from stpp.store import (
    ImportReport,
    Store,
    StoreError,
    create_project,
    disk_usage,
    find_project,
    import_folder_dataset,
    import_voc_labels,
    import_voc_project,
    ingest_files,
    list_project_summaries,
    load_classes,
    load_labelmap,
    open_store,
    parse_class_names,
    project_summary,
)
from stpp.store.export import ExportFilter, export_project
from stpp.store.runs import list_runs


def run_project_command(args: argparse.Namespace) -> int:
    """Run a parsed ``project`` command; returns the exit code (errors: one line on stderr, 2)."""
    try:
        with open_store(workspace_path(args.workspace)) as store:
            return _COMMANDS[args.project_command](store, args)
    except (StoreError, DataError, ConfigError) as error:
        return usage_error(error)


def workspace_path(given: Path | None) -> Path:
    """``--workspace``, else :func:`~stpp.core.layout.default_workspace`."""
    return given if given is not None else default_workspace()


def _create(store: Store, args: argparse.Namespace) -> int:
    if args.classes is not None:
        classes = load_classes(args.classes)
    elif args.labelmap is not None:
        classes = load_labelmap(args.labelmap)
    else:
        classes = parse_class_names(args.class_names, source="--class-names")
    project = create_project(store, args.name, classes)
    print(f"created project {project.name!r} with {classes.num_classes} classes: {', '.join(classes.names)}")
    return EXIT_OK


def _import(store: Store, args: argparse.Namespace) -> int:
    root = args.data
    if not root.exists():
        raise StoreError(f"{root}: no such folder or file")
    if _is_folder_dataset(root):
        project = find_project(store, args.name.strip())
        if project is None:
            if not (root / "classes.json").is_file():
                raise StoreError(f"no project {args.name!r}, and {root} has no classes.json to create it from; "
                                 "run 'project create' first")
            project = create_project(store, args.name, load_classes(root / "classes.json"))
            print(f"created project {project.name!r} from {root / 'classes.json'}")
        report = import_folder_dataset(store, project, root, args.labeled, args.unlabeled, args.val,
                                       in_place=args.in_place)
    else:
        if any(v is not None for v in (args.labeled, args.unlabeled, args.val)):
            raise StoreError("--labeled/--unlabeled/--val apply to folder datasets; a VOC layout has ImageSets/")
        project, report = import_voc_project(store, root, args.name, in_place=args.in_place, existing_ok=True)
    return _print_report(project.name, report, args.verbose)


def _is_folder_dataset(root: Path) -> bool:
    return root.is_dir() and (root / "images").is_dir()


def _add(store: Store, args: argparse.Namespace) -> int:
    report = ingest_files(store, args.name, args.paths, args.role, in_place=args.in_place)
    return _print_report(args.name, report, args.verbose)


def _import_labels(store: Store, args: argparse.Namespace) -> int:
    report = import_voc_labels(store, args.name, args.data)
    return _print_report(args.name, report, args.verbose)


def _print_report(name: str, report: ImportReport, verbose: bool) -> int:
    for note in report.notes:
        print(f"note: {note}")
    for result in report.results:
        if verbose or result.status == "failed":
            print(result)
    print(f"project {name!r}: {report.summary()}")
    return EXIT_FAILED if report.failed else EXIT_OK


def _list(store: Store, args: argparse.Namespace) -> int:
    summaries = list_project_summaries(store)
    if args.json:
        print(json.dumps([_summary_dict(s) for s in summaries], indent=2))
        return EXIT_OK
    if not summaries:
        print(f"no projects in {store.workspace}")
        return EXIT_OK
    print_table(("project", "classes", "labelled", "unlabelled", "validation", "gt masks", "runs", "created"),
                [(s.name, s.project.classes.num_classes, s.images["labelled"], s.images["unlabelled"],
                  s.images["validation"], s.masks["ground_truth"], s.runs, s.project.created[:10])
                 for s in summaries])
    return EXIT_OK


def _status(store: Store, args: argparse.Namespace) -> int:
    summary = project_summary(store, args.name)
    usage = disk_usage(store, summary.project)
    runs = [run_row(run) for run in reversed(list_runs(store, summary.project))]
    if args.json:
        data = _summary_dict(summary)
        data["disk"] = {"images": usage.images, "masks": usage.masks, "runs": usage.runs,
                        "in_place": usage.in_place, "total": usage.total}
        data["run_list"] = runs
        print(json.dumps(data, indent=2))
        return EXIT_OK
    classes = summary.project.classes
    print(f"project {summary.name!r} (created {summary.project.created})")
    print(f"classes ({classes.num_classes}, ignore value {classes.ignore_index}):")
    for index, (class_name, (r, g, b)) in enumerate(zip(classes.names, classes.palette)):
        print(f"  {index:3d}  #{r:02x}{g:02x}{b:02x}  {class_name}")
    print("images: " + ", ".join(f"{n} {role}" for role, n in summary.images.items())
          + f" ({summary.total_images} in all)")
    print("masks: " + ", ".join(f"{n} {kind}" for kind, n in summary.masks.items()))
    print(f"runs: {len(runs)}")
    for run in runs:
        stage = f", stage {run['stage']}" if run["stage"] else ""
        print(f"  run {run['id']}: {run['method']}, {run['status']}{stage}, {run['progress'] * 100:.0f}%")
    print(f"disk: {format_bytes(usage.images)} images, {format_bytes(usage.masks)} masks, "
          f"{format_bytes(usage.runs)} runs "
          f"({format_bytes(usage.total)} in the workspace); {format_bytes(usage.in_place)} registered in place")
    return EXIT_OK


def _export(store: Store, args: argparse.Namespace) -> int:
    groups = ExportFilter.__dataclass_fields__.keys() - {"min_stability"}
    chosen = set(groups) if args.only is None else {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = chosen - groups
    if unknown:
        raise StoreError(f"unknown --only group(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(sorted(groups))}")
    selection = ExportFilter(**{g: g in chosen for g in groups}, min_stability=args.min_stability)
    report = export_project(store, args.name, args.out, args.fmt, run_id=args.run, stage=args.stage,
                            filter=selection, include_reference=args.include_reference,
                            allow_unfinished=args.allow_unfinished)
    print(f"wrote {report.path}: {report.exported} images ({args.fmt}); left out: {len(report.left_out)}")
    return EXIT_OK


def _predict(store: Store, args: argparse.Namespace) -> int:
    # torch only for this command: the other project commands stay light.
    from stpp.core.layout import RunLayout
    from stpp.engine.device import configure_cpu_threads, resolve_device
    from stpp.headless import RunError, predict_folder
    from stpp.store.runs import get_run

    project = find_project(store, args.name)
    if project is None:
        raise StoreError(f"no project named {args.name!r}")
    if args.run is not None:
        run = get_run(store, args.run)
        if run.project_id != project.id:
            raise StoreError(f"run {args.run} belongs to another project, not {args.name!r}")
    else:
        runs = [r for r in list_runs(store, project) if r.run_dir and r.status in ("done", "awaiting_review")]
        if not runs:
            raise StoreError(f"project {args.name!r} has no finished run to predict with")
        run = max(runs, key=lambda r: r.id)
    configure_cpu_threads()
    try:
        written = predict_folder(RunLayout(store.path(run.run_dir)), args.images, args.out, args.stage, args.tta,
                                 resolve_device(args.device))
    except (RunError, ValueError) as error:
        raise StoreError(str(error)) from None
    print(f"wrote {len(written)} masks to {args.out} (run {run.id})")
    return EXIT_OK


def _summary_dict(summary) -> dict:
    classes = summary.project.classes
    return {"name": summary.name, "id": summary.project.id, "created": summary.project.created,
            "classes": classes.to_dict(), "images": summary.images, "masks": summary.masks, "runs": summary.runs}


_COMMANDS = {"create": _create, "import": _import, "add": _add, "import-labels": _import_labels,
             "list": _list, "status": _status, "export": _export, "predict": _predict, **RUN_COMMANDS}
