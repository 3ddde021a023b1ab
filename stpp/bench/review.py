"""What a review is worth: a simulated reviewer on a run paused after the ranking.

``python -m stpp.bench review (--data ROOT --split 1_8 [--preset camvid-cpu] [--import-run RUN_DIR] | --run ID)
[--workspace DIR] [--orders ...] [--budgets 10,25,50,100] [--threshold 0.6] [--corrections 0,10]
[--seed 0] [--random-draws 10] [--students ORDERS [--student-budget 50] [--student-corrections 10] [--student-until PAUSE]]
[--results FILE] [--plot FILE]``

The data is a folder dataset whose unlabelled images have ground truth; imported into a project of
the store (``bench-<dataset>-<split>``), that ground truth becomes ``reference`` masks, which training
never reads. The benchmark starts from that project's ST++ run paused after the ranking (launched
with review, as the app's Train tab does, when there is none yet; ``--run`` names one). A simulated
reviewer then goes through the run's unlabelled images in an **order** (``least-stable`` first,
``most-stable`` first, ``lowest-confidence`` first, or ``random``, drawn ``--random-draws`` times from
consecutive seeds and reported as mean ± std) and decides on the first N of them (the **budget**):

- it accepts the pseudo mask the Review tab shows when its mIoU against the reference is at least
  ``--threshold``, else rejects the image;
- with ``M`` corrections (``--corrections``), the first M images it would reject get the reference
  mask as their corrected mask instead (an upper bound on what a person's correction gives).

Decisions are recorded with :func:`stpp.services.review.record_decision`, the Review tab's own
function, so the store's review rows are what the app writes. Each (order, corrections) sequence runs
inside a store transaction that is rolled back afterwards (:func:`stpp.store.trial.rolled_back`): the
run stays paused with no decision recorded, and the benchmark can be run again.

The outcome is the *dataset quality* at each budget (no training): the pooled mIoU and per-class IoU of
what an export of the run would write for the unlabelled images, against their references
(:func:`stpp.services.quality.dataset_quality`), and how many images it keeps. Budget 0 is the run's
automatic result (every pseudo mask kept). A run keeps no probabilities (its labelling pass stores
argmax masks), so the lowest-confidence order first runs the final teacher once over the ranked images
(:mod:`stpp.selftrain.probability_signals`; kept in the run folder's ``teacher_signals.csv``).

With ``--students ORDERS`` it also measures the *model quality*: the ranked run is forked once with
no review (``automatic``) and once per order at ``--student-budget`` with ``--student-corrections``,
and each fork trains its ST++ students on what the reviewed run's worker would be handed
(:mod:`stpp.bench.review_students`); ``--student-until stage1`` stops them after the re-training on
the reviewed set. ``--import-run RUN_DIR`` takes a headless run ranked elsewhere
(``python -m stpp run ... --until ranking``) instead of launching one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from stpp.cli.project_runs import compute_with_progress_bar
from stpp.core.label_order import LEAST_STABLE, LOWEST_CONFIDENCE
from stpp.core.masks import atomic_save, read_mask
from stpp.core.metrics import mask_miou
from stpp.core.teacher_signals import read_teacher_signals
from stpp.jobs import JobRunner
from stpp.services.quality import DatasetQuality, dataset_quality
from stpp.services.review import pauses_reached, record_decision
from stpp.services.run_copy import import_run_copy
from stpp.store import (
    Store,
    StoreError,
    create_project,
    find_project,
    import_folder_dataset,
    load_classes,
    open_store,
)
from stpp.store.images import image_ids_by_name
from stpp.store.projects import Project, get_project
from stpp.store.ranking import ranked_references, ranks_by_name
from stpp.store.reviews import Decision
from stpp.store.runs import Run, current_pseudo_masks, get_run, list_runs, run_layout
from stpp.store.trial import rolled_back

ORDERS = (LEAST_STABLE, "most-stable", LOWEST_CONFIDENCE, "random")
"""The orders the simulated reviewer can go through the images in."""
AUTOMATIC = "automatic"
"""The student variant with no review: the ranked run continued as it is."""
SIMULATED_USER = "simulated-reviewer"
"""The user recorded with the simulated reviewer's decisions."""
DEFAULT_WORKSPACE = Path("benchmarks/runs/review-ws")
DEFAULT_RANDOM_DRAWS = 10
"""Random orders the grid draws by default: a sequence is seconds, and one draw leaves the spread unknown."""


@dataclass(frozen=True)
class Rule:
    """How the simulated reviewer decides.

    Attributes:
        threshold: accept a pseudo mask whose mIoU (0..1) against the reference is at least this.
        corrections: M: the first M images it would reject are corrected with the reference instead.
    """

    threshold: float = 0.6
    corrections: int = 0


def review_order(store: Store, run_id: int, order: str, seed: int = 0) -> list[str]:
    """The run's ranked images, by name, in the order the simulated reviewer goes through them.

    Raises:
        ValueError: an unknown order.
        StoreError: the lowest-confidence order on a run whose teacher signals were not computed
            (:func:`stpp.cli.project_runs.compute_with_progress_bar`).
    """
    by_rank = sorted(ranks_by_name(store, run_id).items(), key=lambda item: (item[1], item[0]))
    names = [name for name, _ in by_rank]
    if order == "most-stable":
        return names
    if order == LEAST_STABLE:
        return names[::-1]
    if order == LOWEST_CONFIDENCE:
        signals = read_teacher_signals(run_layout(store, get_run(store, run_id)))
        if any(name not in signals for name in names):
            raise StoreError(f"run {run_id} has no teacher confidence of every ranked image; compute it first")
        return sorted(names, key=lambda name: (signals[name]["confidence"], name))
    if order == "random":
        return [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    raise ValueError(f"unknown order {order!r}; choose from: {', '.join(ORDERS)}")


def simulate_review(store: Store, run_id: int, names: Sequence[str], rule: Rule,
                    user: str = SIMULATED_USER) -> Iterator[Decision]:
    """Decide on ``names`` in order, as :class:`Rule` says, through the Review tab's ``record_decision``.

    Yields each decision once it is recorded, so a caller can measure after any number of them.

    Raises:
        StoreError: an image with no pseudo mask in the run or no reference mask.
    """
    run = get_run(store, run_id)
    classes = get_project(store, run.project_id).classes
    ids = image_ids_by_name(store, get_project(store, run.project_id))
    references = {ref.image_id: ref.path for ref in ranked_references(store, run.id) if ref.path}
    corrected = 0
    for name in names:
        image_id = ids[name]
        if image_id not in references:
            raise StoreError(f"image {name!r} has no reference mask: the simulated reviewer cannot judge it")
        shown = current_pseudo_masks(store, run.id, [image_id]).get(image_id)
        if shown is None:
            raise StoreError(f"run {run.id} has no pseudo mask of {name!r}")
        reference = read_mask(store.path(references[image_id]))
        score = mask_miou(reference, read_mask(store.path(shown[1])), classes.num_classes, classes.ignore_index)
        if not np.isnan(score) and score >= rule.threshold:
            yield record_decision(store, run.id, image_id, "accepted", user=user)
        elif corrected < rule.corrections:
            corrected += 1
            yield record_decision(store, run.id, image_id, "corrected", mask=reference, user=user)
        else:
            yield record_decision(store, run.id, image_id, "rejected", user=user)


def measure_grid(store: Store, run_id: int, orders: Sequence[str], budgets: Sequence[int],
                 corrections: Sequence[int], threshold: float, seed: int = 0, random_draws: int = 1,
                 on_point: Callable[[dict], None] | None = None) -> dict:
    """Dataset quality for every (order, corrections, budget), each sequence rolled back afterwards. The
    random order is drawn ``random_draws`` times, seeded ``seed``, ``seed + 1``, ...

    Returns:
        ``{"automatic": row, "grid": [row, ...]}``; a row holds the order, its seed (None but for the
        random order), corrections, budget, decisions made, images kept, their sources, mIoU and
        per-class IoU.
    """
    names = get_project(store, get_run(store, run_id).project_id).classes.names
    automatic = _row(dataset_quality(store, run_id), names, {"budget": 0})
    grid = []
    for order in orders:
        for order_seed in range(seed, seed + random_draws) if order == "random" else [None]:
            sequence = review_order(store, run_id, order, seed if order_seed is None else order_seed)
            for m in corrections:
                wanted = sorted({min(b, len(sequence)) for b in budgets})
                counts = {"accepted": 0, "rejected": 0, "corrected": 0}
                with rolled_back(store):
                    decisions = simulate_review(store, run_id, sequence[:wanted[-1]], Rule(threshold, m))
                    for decided, decision in enumerate(decisions, 1):
                        counts[decision.decision] += 1
                        if decided in wanted:
                            row = _row(dataset_quality(store, run_id), names, {
                                "order": order, "seed": order_seed, "corrections": m, "budget": decided, **counts})
                            grid.append(row)
                            if on_point is not None:
                                on_point(row)
    return {"automatic": automatic, "grid": grid}


@dataclass(frozen=True)
class GridCell:
    """One (order, corrections, budget) of the grid over its draws: one for every order but random.

    Attributes:
        miou: mean dataset mIoU over the draws (None where no draw kept an image).
        miou_std: its standard deviation over the draws (0 for one draw).
        kept: mean number of images kept.
        draws: how many sequences it summarises.
    """

    miou: float | None
    miou_std: float
    kept: float
    draws: int


def grid_cells(grid: Sequence[dict]) -> dict[tuple[str, int], dict[int, GridCell]]:
    """The grid's cells by (order, corrections), then by budget (ascending), the random order's draws
    summarised as mean and std."""
    groups: dict[tuple[str, int], dict[int, list[dict]]] = {}
    for row in sorted(grid, key=lambda row: row["budget"]):
        groups.setdefault((row["order"], row["corrections"]), {}).setdefault(row["budget"], []).append(row)
    cells: dict[tuple[str, int], dict[int, GridCell]] = {}
    for key, by_budget in groups.items():
        for budget, rows in by_budget.items():
            mious = [row["miou"] for row in rows if row["miou"] is not None]
            cells.setdefault(key, {})[budget] = GridCell(
                miou=float(np.mean(mious)) if mious else None, miou_std=float(np.std(mious)) if mious else 0.0,
                kept=float(np.mean([row["kept"] for row in rows])), draws=len(rows))
    return cells


def _draws(row_cells: dict[int, GridCell]) -> int:
    return max((cell.draws for cell in row_cells.values()), default=1)


def _row(quality: DatasetQuality, class_names: Sequence[str], head: dict) -> dict:
    return {**head, "kept": quality.kept, "images": quality.images, "sources": quality.sources,
            "miou": quality.miou, "per_class": dict(zip(class_names, quality.iou))}


def bench_project(store: Store, root: Path, split: str) -> Project:
    """The project ``bench-<dataset>-<split>`` of a folder dataset: imported (images in place) when missing."""
    name = f"bench-{root.resolve().name}-{split}"
    project = find_project(store, name)
    if project is not None:
        return project
    project = create_project(store, name, load_classes(root / "classes.json"))
    split_dir = root / "splits" / split
    report = import_folder_dataset(store, project, root, split_dir / "labeled.txt", split_dir / "unlabeled.txt",
                                   root / "splits" / "val.txt", in_place=True)
    if report.failed:
        raise StoreError(f"importing {root}: {report.summary()}; first: {report.failed[0]}")
    return project


def ranked_run(runner: JobRunner, project: Project, preset: str, overrides: Sequence[str], device: str,
               on_poll: Callable[[Run], None] | None = None) -> Run:
    """The project's ST++ run of ``preset`` paused after the ranking: an unfinished one is waited for,
    and one is launched with review when there is none.

    Raises:
        StoreError: the run failed or was cancelled, or it paused elsewhere than after the ranking.
    """
    store = runner.store
    runs = [r for r in list_runs(store, project) if r.method == "st++" and r.preset == preset
            and r.status in ("queued", "running", "awaiting_review")]
    run = max(runs, key=lambda r: r.id) if runs else runner.launch(project, "st++", preset, list(overrides), device,
                                                                    review=True)
    run = runner.wait(run.id, None, statuses=("awaiting_review", "done", "failed", "cancelled"), on_poll=on_poll)
    check_ranked(store, run.id)
    return run


def check_ranked(store: Store, run_id: int) -> None:
    """Refuse a run that is not ranked and paused there: awaiting review right after its ranking, or
    ended with its ranking and no student (a headless ``--until ranking`` run imported as a copy).

    Raises:
        StoreError: it paused after a later stage, trained a student, or holds no ranking.
    """
    run = get_run(store, run_id)
    pauses = pauses_reached(store, run.id)
    if run.status == "awaiting_review" and pauses[-1:] == ("ranking",):
        return
    layout = run_layout(store, run)
    if run.status != "awaiting_review" and layout.scores_path.exists() and not any(layout.root.glob("stages/stage*")):
        return
    where = f"paused after {pauses[-1]}" if run.status == "awaiting_review" and pauses else run.status
    raise StoreError(f"run {run.id} is {where}; the benchmark needs a run paused after the ranking")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.bench review", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder dataset with ROOT/splits/SPLIT/{labeled,unlabeled}.txt")
    parser.add_argument("--split", help="folder name under ROOT/splits, e.g. 1_8")
    parser.add_argument("--preset", default="camvid-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE)
    parser.add_argument("--run", type=int, default=None, help="a run of the workspace paused after the ranking")
    parser.add_argument("--import-run", type=Path, default=None, metavar="RUN_DIR",
                        help="a headless run folder ranked with --until ranking on --data: imported as a run "
                             "of the benchmark project and measured")
    parser.add_argument("--orders", default=",".join(ORDERS),
                        help="review orders (default: all); lowest-confidence first runs the final teacher over the "
                             "ranked images once, with every TTA view (about 30 min on CamVid, 2 CPU cores)")
    parser.add_argument("--budgets", default="10,25,50,100")
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--corrections", default="0,10", help="M values: corrections per sequence")
    parser.add_argument("--seed", type=int, default=0, help="the random order's first seed")
    parser.add_argument("--random-draws", type=int, default=DEFAULT_RANDOM_DRAWS,
                        help="random orders drawn for the grid, seeded --seed, --seed + 1, ... (default: "
                             f"{DEFAULT_RANDOM_DRAWS}; the students' random order uses --seed)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON file (default: benchmarks/results/review-<project>-run<ID>.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file (default: the results file's, .png)")
    parser.add_argument("--students", default=None, metavar="ORDERS",
                        help="also train ST++ students after the review (model quality): automatic (always), "
                             "and these orders at --student-budget with --student-corrections (about an hour each on "
                             "camvid-cpu, 2 cores)")
    parser.add_argument("--student-budget", type=int, default=50)
    parser.add_argument("--student-corrections", type=int, default=10)
    parser.add_argument("--student-until", default=None, metavar="PAUSE",
                        help="train the students only to this pause point (stage1: the re-training on the "
                             "reviewed set, before the unreliable images are re-labelled)")
    args = parser.parse_args(argv)
    orders = args.orders.split(",")
    if any(order not in ORDERS for order in orders):
        parser.error(f"--orders takes some of: {', '.join(ORDERS)}")
    if args.run is None and (args.data is None or args.split is None):
        parser.error("give --data and --split (or --run)")
    if args.import_run is not None and args.run is not None:
        parser.error("give --run or --import-run, not both")
    student_orders = [] if args.students is None else [o for o in args.students.split(",") if o != AUTOMATIC]
    if any(order not in ORDERS for order in student_orders):
        parser.error(f"--students takes some of: {AUTOMATIC} (always trained), {', '.join(ORDERS)}")
    if args.random_draws < 1:
        parser.error("--random-draws must be at least 1")
    budgets = [int(b) for b in args.budgets.split(",")]
    corrections = [int(m) for m in args.corrections.split(",")]

    with open_store(args.workspace) as store:
        if args.import_run is not None:
            project = bench_project(store, args.data, args.split)
            run = import_run_copy(store, project, args.import_run).run
            check_ranked(store, run.id)
            print(f"imported {args.import_run} as run {run.id}", file=sys.stderr)
        elif args.run is None:
            project = bench_project(store, args.data, args.split)
            run = ranked_run(JobRunner(store), project, args.preset, args.overrides, args.device, _show_progress)
        else:
            check_ranked(store, args.run)
            run = get_run(store, args.run)
            project = get_project(store, run.project_id)
        if LOWEST_CONFIDENCE in orders + student_orders:
            compute_with_progress_bar(store, run.id, args.device)
        measured = measure_grid(store, run.id, orders, budgets, corrections, args.threshold, args.seed,
                                args.random_draws, on_point=_show_point)
        not_measured = {}
        if args.students is None:
            not_measured["model quality"] = "students trained after the review: not run (see --students)"
        else:
            measured["model_quality"] = _model_quality(store, run.id, student_orders, args)
        report = {
            "project": project.name,
            "run": {"id": run.id, "method": run.method, "preset": run.preset, "config_hash": run.config_hash,
                    "device": run.device},
            "date": date.today().isoformat(),
            "classes": list(project.classes.names),
            "threshold": args.threshold,
            "seed": args.seed,
            "random_draws": args.random_draws,
            "orders": orders,
            "budgets": budgets,
            "corrections": corrections,
            "not_measured": not_measured,
            **measured,
            "command": "python -m stpp.bench review " + " ".join(argv if argv is not None else sys.argv[2:]),
        }
    results = args.results or Path("benchmarks/results") / f"review-{project.name}-run{run.id}.json"
    atomic_save(results, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    plot_path = args.plot or results.with_suffix(".png")
    plot(report, plot_path)
    print(to_markdown(report))
    print(f"results: {results}; plot: {plot_path}", file=sys.stderr)
    return 0


def _model_quality(store: Store, run_id: int, orders: Sequence[str], args: argparse.Namespace) -> dict:
    # Imported here: only training students needs torch; the grid does not.
    from stpp.bench.review_students import student_variants, train_students
    from stpp.cli.progress import TqdmSink

    sink = TqdmSink()
    variants = student_variants(orders, args.student_budget, args.student_corrections)
    rows = train_students(store, run_id, variants, args.threshold, args.seed, args.student_until, args.device, sink)
    sink.close()
    return {"budget": args.student_budget, "corrections": args.student_corrections, "until": args.student_until,
            "variants": rows}


def _show_progress(run: Run) -> None:
    print(f"\rrun {run.id}: {run.status}, stage {run.stage or '-'}, {run.progress:.0%}", end="", file=sys.stderr,
          flush=True)


def _show_point(row: dict) -> None:
    miou = "n/a" if row["miou"] is None else f"{row['miou']:.2f}"
    order = row["order"] if row["seed"] is None else f"{row['order']} (seed {row['seed']})"
    print(f"{order}, M={row['corrections']}, {row['budget']} reviewed: {row['kept']} kept, mIoU {miou}",
          file=sys.stderr, flush=True)


def to_markdown(report: dict) -> str:
    """The grid as a Markdown table: one row per (order, corrections), mIoU and images kept per budget;
    then, when students were trained, their val mIoU per stage and variant."""
    auto = report["automatic"]
    budgets = sorted({row["budget"] for row in report["grid"]})
    lines = [f"automatic (no review): mIoU {_fmt(auto['miou'])} over {auto['kept']} of {auto['images']} images",
             "", "| order | M | " + " | ".join(f"{b} reviewed: mIoU (kept)" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    cells = grid_cells(report["grid"])
    for order in report["orders"]:
        for m in report["corrections"]:
            row_cells = cells.get((order, m), {})
            draws = _draws(row_cells)
            label = order if draws == 1 else f"{order} ({draws} draws: mean ± std)"
            lines.append(f"| {label} | {m} | " + " | ".join(
                _cell_text(row_cells[b]) if b in row_cells else "" for b in budgets) + " |")
    if "model_quality" in report:
        lines += ["", *students_markdown(report["model_quality"])]
    return "\n".join(lines) + "\n"


def students_markdown(model_quality: dict) -> list[str]:
    """Val mIoU of the students per variant and stage, and each stage's gain over the automatic run."""
    rows = model_quality["variants"]
    stages = [s for s in rows[0]["stages"] if any(r["stages"].get(s) is not None for r in rows)]
    automatic = next((r for r in rows if r["order"] is None), None)
    lines = ["| variant | accepted | rejected | corrected | " + " | ".join(f"{s} val mIoU" for s in stages)
             + " | gain over automatic |", "|---|---|---|---|" + "---|" * (len(stages) + 1)]
    for row in rows:
        last = row["last_stage"]
        base = None if automatic is None or row is automatic or last is None else automatic["stages"].get(last)
        gain = "" if base is None else f"{row['miou'] - base:+.2f} ({last})"
        lines.append(f"| {row['variant']} | {row['accepted']} | {row['rejected']} | {row['corrected']} | "
                     + " | ".join(_fmt(row["stages"].get(s)) for s in stages) + f" | {gain} |")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _cell_text(cell: GridCell) -> str:
    if cell.draws == 1:
        return f"{_fmt(cell.miou)} ({cell.kept:.0f})"
    return f"{_fmt(cell.miou)} ± {cell.miou_std:.2f} ({cell.kept:.0f})"


def plot(report: dict, path: Path) -> None:
    """mIoU and images kept against images reviewed, one line per order, one column per M."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corrections = report["corrections"]
    figure, axes = plt.subplots(2, len(corrections), figsize=(5 * len(corrections), 7), squeeze=False, sharex=True)
    auto = report["automatic"]
    cells = grid_cells(report["grid"])
    for column, m in enumerate(corrections):
        for order in report["orders"]:
            row_cells = cells.get((order, m), {})
            points = list(row_cells.values())
            budgets = [0] + list(row_cells)
            mious = np.array([auto["miou"]] + [cell.miou for cell in points], dtype=float)
            spread = np.array([0.0] + [cell.miou_std for cell in points])
            draws = _draws(row_cells)
            label = order if draws == 1 else f"{order} (mean ± std of {draws})"
            line, = axes[0][column].plot(budgets, mious, marker="o", label=label)
            if spread.any():
                axes[0][column].fill_between(budgets, mious - spread, mious + spread, color=line.get_color(), alpha=0.2)
            axes[1][column].plot(budgets, [auto["kept"]] + [cell.kept for cell in points], marker="o", label=order)
        axes[0][column].set_title(f"accept at mIoU >= {report['threshold']:g}, else reject; "
                                  f"first {m} rejected corrected", fontsize=9)
        axes[0][column].set_ylabel("dataset mIoU vs reference (%)")
        axes[1][column].set_ylabel("unlabelled images kept")
        axes[1][column].set_xlabel("images reviewed")
        axes[0][column].legend(fontsize=8)
        axes[0][column].grid(alpha=0.3)
        axes[1][column].grid(alpha=0.3)
    figure.suptitle(f"Simulated review of {report['project']}, run {report['run']['id']} "
                    f"({report['run']['preset']}), paused after the ranking", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
