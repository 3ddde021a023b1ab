"""How well a run's stability ranking sorts its unlabelled images, against their ground truth.

``python -m stpp.bench ranking RUN_DIR [RUN_DIR ...] --data ROOT [--draws 20] [--teacher-signals [--device cpu]]
[--json FILE]``

Each ``RUN_DIR`` is a headless ST++ run folder that reached the ranking (``scores.csv``, the K
``stability/ckpt<j>/`` masks and ``pseudo/teacher/``) on a folder dataset whose unlabelled images have
masks (CamVid's do; training never read them). No training: the study
(:mod:`stpp.selftrain.ranking_study`) compares the run's split with the perfect one, random ones and
the other ranking signals, and prints Markdown tables (JSON with ``--json``). ``--teacher-signals``
adds the final teacher's confidence and TTA agreement, which take one pass of it over the ranked images
(kept in ``RUN_DIR/teacher_signals.csv``: a second study reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from tqdm import tqdm

from stpp.core.config import StppConfig
from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save, read_mask
from stpp.core.teacher_signals import read_teacher_signals
from stpp.data.datasets import FolderDataset
from stpp.engine.device import resolve_device
from stpp.selftrain.pipeline import read_scores
from stpp.selftrain.probability_signals import teacher_signals
from stpp.selftrain.ranking_study import (
    DEFAULT_RANDOM_DRAWS,
    SIGNALS,
    RankingStudy,
    figure_text,
    image_evidence,
    ranking_study,
)


def folder_ranking_study(layout: RunLayout, dataset: FolderDataset, cfg: StppConfig,
                         draws: int = DEFAULT_RANDOM_DRAWS) -> RankingStudy | None:
    """The ranking study of a run folder's ranked images against the dataset's masks of them; None when
    the run has no ranking or an image lacks a mask, a pseudo mask or a checkpoint mask. The
    probability signals are studied where the run folder keeps them for every ranked image
    (:func:`stpp.selftrain.teacher_signals.teacher_signals`)."""
    if not layout.scores_path.exists():
        return None
    scores = read_scores(layout.scores_path)
    k = cfg.pseudo.num_checkpoints
    probability_signals = read_teacher_signals(layout)
    evidence = []
    for score in scores:
        reference = dataset.mask_path(score.image_id)
        pseudo = layout.pseudo_dir("teacher") / f"{score.image_id}.png"
        checkpoints = [layout.stability_dir(j) / f"{score.image_id}.png" for j in range(1, k + 1)]
        if reference is None or not pseudo.exists() or not all(p.exists() for p in checkpoints):
            return None
        evidence.append(image_evidence(score.image_id, read_mask(reference), read_mask(pseudo),
                                       [read_mask(p) for p in checkpoints], cfg.data.num_classes,
                                       cfg.data.ignore_index, probability_signals.get(score.image_id)))
    if len(evidence) < 2:
        return None
    return ranking_study(evidence, cfg.selftrain.reliable_ratio, draws, seed=cfg.seed)


def study_json(study: RankingStudy, class_names) -> dict:
    """The study as JSON: one row per ranking, and the per-class IoU of each half of the run's split and
    of the perfect split (what the ranking trades, class by class)."""
    stability = study.signals["stability"].split
    per_class = {}
    for label, split in (("stability", stability), ("perfect", study.perfect)):
        for half_name, half in (("reliable", split.reliable), ("unreliable", split.unreliable)):
            per_class[f"{label} {half_name}"] = dict(zip(class_names, half.iou))
    return {"images": study.images, "ratio": study.ratio, "reliable": study.reliable,
            "random_draws": len(study.random), "signals": {name: SIGNALS[name] for name in study.signals}, "rows": study.rows(),
            "per_class_iou": per_class}


def study_markdown(study: dict) -> str:
    """The JSON of :func:`study_json` as two Markdown tables."""
    lines = [f"{study['images']} ranked images, reliable top {study['reliable']} (R = {study['ratio']:g}); "
             "teacher pseudo masks against ground truth, in percent.", "",
             "| ranking | reliable pooled mIoU | unreliable pooled mIoU | gap | share of perfect gap | "
             "reliable mean image mIoU | unreliable mean image mIoU | reliable pixel acc. | unreliable pixel acc. | "
             "Spearman with image mIoU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in study["rows"]:
        lines.append("| " + " | ".join([row["ranking"], *(figure_text(row[key]) for key in (
            "reliable_pooled_miou", "unreliable_pooled_miou", "gap", "share_of_perfect", "reliable_image_miou",
            "unreliable_image_miou", "reliable_pixel_accuracy", "unreliable_pixel_accuracy", "spearman"))]) + " |")
    halves = list(study["per_class_iou"])
    classes = list(study["per_class_iou"][halves[0]])
    lines += ["", "| class | " + " | ".join(halves) + " |", "|---|" + "---|" * len(halves)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(figure_text(study["per_class_iou"][h][name]) for h in halves) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.bench ranking", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data", type=Path, required=True, help="the folder dataset the runs were trained on")
    parser.add_argument("--draws", type=int, default=DEFAULT_RANDOM_DRAWS, help="random splits (default: 20)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument("--teacher-signals", action="store_true",
                        help="also study the final teacher's confidence and TTA agreement (one pass of it over the "
                             "ranked images with every TTA view; kept in RUN_DIR/teacher_signals.csv)")
    parser.add_argument("--device", default="cpu", help="where that pass runs")
    args = parser.parse_args(argv)
    dataset = FolderDataset.open(args.data)
    report = {"date": date.today().isoformat(), "data": str(args.data), "runs": {},
              "command": "python -m stpp.bench ranking " + " ".join(map(str, argv or sys.argv[2:]))}
    for run_dir in args.runs:
        layout = RunLayout(run_dir)
        cfg = StppConfig.from_dict(json.loads(layout.config_path.read_text()))
        if args.teacher_signals and layout.scores_path.exists():
            compute_teacher_signals(layout, cfg, dataset, args.device)
        study = folder_ranking_study(layout, dataset, cfg, args.draws)
        if study is None:
            parser.error(f"{run_dir}: no ranking, or an image without a mask, pseudo mask or checkpoint mask")
        found = {"preset": cfg.preset, "seed": cfg.seed, **study_json(study, cfg.data.class_names)}
        report["runs"][str(run_dir)] = found
        print(f"## {run_dir} (preset {cfg.preset}, seed {cfg.seed})\n")
        print(study_markdown(found))
    if args.json:
        atomic_save(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
        print(f"results: {args.json}", file=sys.stderr)
    return 0


def compute_teacher_signals(layout: RunLayout, cfg: StppConfig, dataset: FolderDataset, device: str) -> None:
    """The probability signals of the run's ranked images, computed where the run folder lacks them."""
    paths = {score.image_id: dataset.image_path(score.image_id) for score in read_scores(layout.scores_path)}
    with tqdm(total=len(paths), desc=f"teacher signals of {layout.root.name}", unit="image") as bar:
        teacher_signals(layout, cfg, paths, resolve_device(device), on_image=lambda done, total: bar.update(1))


if __name__ == "__main__":
    sys.exit(main())
