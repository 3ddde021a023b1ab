"""SupOnly vs ST vs ST++ on a folder dataset with standard splits, plus pseudo-mask quality.

``python -m stpp.bench quality --data ROOT --split 1_8 --preset camvid-cpu [--methods ...]
[--seeds 0,1] [--ablations [NAMES]] [--ceilings] [--out DIR] [--results FILE]``

``--split 1_8`` means ``ROOT/splits/1_8/{labeled,unlabeled}.txt``; validation is ``ROOT/splits/val.txt``.
Each (method, seed) is an ordinary headless run folder under ``--out``; finished runs are reused and
killed ones resumed, so the benchmark can be run in pieces. ST and ST++ start from a copy of the
SupOnly run's teacher checkpoints: with the same seed and config the teacher stage is the same
training, so it is done once. Over several ``--seeds``, each method's val mIoU is reported as mean ± std
and, paired, as its gain over SupOnly of the same seed (a seed moves a run by more than a point, so
the paired gain is the figure to read). Seeds add up across invocations, machines included: the
results file keeps every (method, seed) row it held whose config is still the one this invocation
would train (same preset, ``--set`` values and defaults), so ``--seeds 1`` today and ``--seeds 2``
tomorrow report both; each row names the machine it ran on.

``--ceilings`` adds what the split could reach, read against the gain: SupOnly trained with every
unlabelled image's ground truth as a label (``supervised (all labels)``), and ST whose teacher is
perfect (``st (ground-truth pseudo masks)``: SupOnly's teacher, with each unlabelled image's ground
truth put where its pseudo mask goes).

Pseudo-mask quality needs ground truth for the unlabelled images (CamVid has it): the teacher's
pseudo masks are scored against it on the reliable and the unreliable half, the unreliable half again
after re-labelling with the stage-1 model ("boosted"), and the Spearman correlation between
stability and each image's pseudo-mask mIoU is reported. That ground truth is read here only, after
training; training never sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stpp.bench.ranking import folder_ranking_study, study_json, study_markdown
from stpp.core.classes import DataError
from stpp.core.config import StppConfig
from stpp.core.events import read_events
from stpp.core.layout import RunLayout
from stpp.core.masks import atomic_save, read_mask
from stpp.data.datasets import FolderDataset
from stpp.engine.device import configure_cpu_threads, resolve_device
from stpp.engine.metrics import ConfusionMatrix
from stpp.headless import describe_inputs, load_folder_run_data, prepare_run_dir, resolve_config, run_headless
from stpp.selftrain.pipeline import RunData, read_scores, stage_names


@dataclass(frozen=True)
class Variant:
    """One row of the results table: a method plus config overrides.

    Attributes:
        ceiling: None for the split as given; ``all-labels`` trains with every unlabelled image's
            ground truth as a label; ``perfect-teacher`` starts from SupOnly's teacher and uses the
            unlabelled images' ground truth as the teacher's pseudo masks.
    """

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    ceiling: str | None = None


ABLATIONS = {
    "sda-off": Variant("st++ (SDA off)", "st++", ("augment.strong_unlabeled=false",)),
    "random-split": Variant("st++ (random split)", "st++", ("selftrain.split=random",)),
    "pixel-0.5": Variant("st (pixel selection 0.5)", "st", ("selftrain.pixel_threshold=0.5",)),
    "r25": Variant("st++ (R = 25%)", "st++", ("selftrain.reliable_ratio=0.25",)),
    "r75": Variant("st++ (R = 75%)", "st++", ("selftrain.reliable_ratio=0.75",)),
}
"""The paper's ablations, by the name ``--ablations`` takes."""
CEILINGS = (
    Variant("supervised (all labels)", "supervised", ceiling="all-labels"),
    Variant("st (ground-truth pseudo masks)", "st", ceiling="perfect-teacher"),
)
"""What the split could reach: SupOnly with every train image labelled, and ST with a perfect teacher."""


def ablation_variants(names: str | None) -> list[Variant]:
    """The ablation rows ``--ablations`` asks for: None none, ``all`` every one, else a comma list of names."""
    if names is None:
        return []
    if names == "all":
        return list(ABLATIONS.values())
    unknown = [n for n in names.split(",") if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {', '.join(unknown)}; choose from: all, {', '.join(ABLATIONS)}")
    return [ABLATIONS[n] for n in names.split(",")]


@dataclass
class RunResult:
    variant: Variant
    seed: int
    run_dir: Path
    miou: float | None
    per_class: dict
    seconds: float
    stages: dict = field(default_factory=dict)
    config_hash: str = ""
    device: str = ""
    date: str = ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stpp.bench quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", required=True, help="folder name under ROOT/splits, e.g. 1_8")
    parser.add_argument("--preset", default="camvid-cpu")
    parser.add_argument("--methods", default="supervised,st,st++")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ablations", nargs="?", const="all", default=None, metavar="NAMES",
                        help=f"add the paper's ablation rows: all (the default), or some of {', '.join(ABLATIONS)}")
    parser.add_argument("--ceilings", action="store_true",
                        help="add the ceilings: SupOnly on every train label, ST on the unlabelled ground truth")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runs"))
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON results file (default: benchmarks/results/<dataset>-<split>-<preset>.json)")
    args = parser.parse_args(argv)
    try:
        variants = [Variant(m, m) for m in args.methods.split(",")] + ablation_variants(args.ablations)
        variants += list(CEILINGS) if args.ceilings else []
    except ValueError as error:
        parser.error(str(error))
    configure_cpu_threads()

    split_dir = args.data / "splits" / args.split
    labeled, unlabeled, val = split_dir / "labeled.txt", split_dir / "unlabeled.txt", args.data / "splits" / "val.txt"
    data = load_folder_run_data(args.data, labeled, unlabeled, val)
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset_name = args.data.resolve().name
    tag = f"{dataset_name}-{args.split}-{args.preset}"

    def config_for(variant: Variant, seed: int) -> StppConfig:
        overrides = list(args.overrides) + list(variant.overrides) + [f"seed={seed}"]
        return resolve_config(args.preset, variant.method, overrides, args.device, data.classes)

    dataset = FolderDataset.open(args.data)
    results: list[RunResult] = []
    for seed in seeds:
        teacher_source = None
        for variant in variants:
            cfg = config_for(variant, seed)
            run_data = all_labels(data, dataset) if variant.ceiling == "all-labels" else data
            # The config hash in the name keeps runs of other settings apart (each is reused only as itself).
            run_dir = args.out / tag / f"{_slug(variant.name)}-s{seed}-{cfg.config_hash()[:8]}"
            layout = prepare_run_dir(run_dir, cfg, describe_inputs(args.data, run_data), resume=True)
            if teacher_source is not None and variant.ceiling != "all-labels":
                _reuse_teacher(teacher_source, layout, cfg)
            if variant.ceiling == "perfect-teacher":
                write_perfect_teacher_labels(layout, data, dataset)
            print(f"== {variant.name} (seed {seed}) -> {run_dir}", file=sys.stderr, flush=True)
            run_headless(cfg, run_data, layout, device)
            results.append(_collect(variant, seed, layout, cfg, _device_name(device)))
            if variant.method == "supervised" and not variant.overrides and variant.ceiling is None:
                teacher_source = layout

    results_path = args.results or Path("benchmarks/results") / f"{tag}.json"
    earlier = read_report(results_path, dataset_name, args.split, args.preset)
    ran = {(r.variant.name, r.seed) for r in results}
    kept = [r for r in earlier_results(earlier, lambda v, s: config_for(v, s).config_hash())
            if (r.variant.name, r.seed) not in ran]
    if kept:
        print(f"kept from {results_path}: " + ", ".join(f"{r.variant.name} seed {r.seed}" for r in kept),
              file=sys.stderr)
    report = _report(args, dataset, device, data, results + kept, earlier)
    atomic_save(results_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    markdown = to_markdown(report)
    atomic_save(results_path.with_suffix(".md"), lambda tmp: Path(tmp).write_text(markdown))
    print(markdown)
    print(f"results: {results_path}", file=sys.stderr)
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-" else "_" for c in name).strip("_").replace("__", "_")


def all_labels(data: RunData, dataset: FolderDataset) -> RunData:
    """The split with every unlabelled image labelled by its ground truth (the SupOnly ceiling).

    Raises:
        DataError: an unlabelled image has no ground-truth mask.
    """
    return replace(data, labeled=data.labeled + tuple(replace(s, mask_path=_truth(dataset, s.id))
                                                      for s in data.unlabeled), unlabeled=())


def write_perfect_teacher_labels(layout: RunLayout, data: RunData, dataset: FolderDataset) -> None:
    """Put each unlabelled image's ground truth where the teacher's pseudo mask goes (``pseudo/teacher``),
    so the ST run trains its student on it: the pipeline keeps pseudo masks that exist.

    Raises:
        DataError: an unlabelled image has no ground-truth mask.
    """
    out = layout.pseudo_dir("teacher")
    out.mkdir(parents=True, exist_ok=True)
    for sample in data.unlabeled:
        target = out / f"{sample.id}.png"
        if not target.exists():
            atomic_save(target, lambda tmp, src=_truth(dataset, sample.id): shutil.copyfile(src, tmp))


def _truth(dataset: FolderDataset, image_id: str) -> Path:
    path = dataset.mask_path(image_id)
    if path is None or not path.exists():
        raise DataError(f"unlabelled image {image_id!r} has no ground-truth mask in {dataset.root}: "
                        "the ceilings need every train image's mask")
    return path


def _reuse_teacher(source: RunLayout, target: RunLayout, cfg: StppConfig) -> None:
    """Copy the SupOnly run's teacher checkpoints (and its metrics) into a run that has none yet."""
    k = cfg.pseudo.num_checkpoints
    if all(target.teacher_checkpoint(j).exists() for j in range(1, k + 1)):
        return
    target.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    for j in range(1, k + 1):
        shutil.copyfile(source.teacher_checkpoint(j), target.teacher_checkpoint(j))


def _run_seconds(layout: RunLayout) -> float:
    """Wall time of the run's own work: the sum of its sessions (run_start to the last event before the next)."""
    events = read_events(layout.events_path)
    total, start, last = 0.0, None, None
    for event in events:
        if event["kind"] == "run_start":
            if start is not None:
                total += last - start
            start = event["time"]
        last = event["time"]
    if start is not None:
        total += last - start
    return round(total, 1)


def _collect(variant: Variant, seed: int, layout: RunLayout, cfg: StppConfig, device: str) -> RunResult:
    metrics = json.loads(layout.metrics_path.read_text())
    final = metrics["stages"].get(stage_names(cfg)[-1]) or {}
    return RunResult(variant, seed, layout.root, final.get("miou"), final.get("per_class", {}),
                     _run_seconds(layout), {s: (m or {}).get("miou") for s, m in metrics["stages"].items()},
                     cfg.config_hash(), device, date.today().isoformat())


def read_report(path: Path, dataset: str, split: str, preset: str) -> dict | None:
    """The results file an earlier invocation wrote for this dataset, split and preset, or None (absent,
    unreadable, or written for another benchmark)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (report.get("dataset"), report.get("split"), report.get("preset")) != (dataset, split, preset):
        return None
    return report


def earlier_results(report: dict | None, config_hash: Callable[[Variant, int], str]) -> list[RunResult]:
    """The per-seed rows of an earlier report whose config hash is still ``config_hash(variant, seed)``:
    what was trained then is what this invocation would train now. Rows of other settings or older
    defaults (and reports from before rows were kept per seed) are left out."""
    kept = []
    for name, row in (report or {}).get("methods", {}).items():
        if "method" not in row:
            continue
        variant = Variant(name, row["method"], tuple(row.get("overrides", ())), row.get("ceiling"))
        for seed_row in row.get("per_seed", ()):
            if seed_row["config_hash"] != config_hash(variant, seed_row["seed"]):
                continue
            kept.append(RunResult(variant, seed_row["seed"], Path(seed_row["run"]), seed_row["miou"],
                                  seed_row["per_class"], seed_row["seconds"], seed_row["stages"],
                                  seed_row["config_hash"], seed_row["device"], seed_row["date"]))
    return kept


def pseudo_quality(layout: RunLayout, dataset: FolderDataset) -> dict | None:
    """The paper's Fig. 3 on a finished ST++ run whose unlabelled images have ground truth, with the
    ranking study of its split (:func:`stpp.bench.ranking.folder_ranking_study`)."""
    cfg = StppConfig.from_dict(json.loads(layout.config_path.read_text()))
    study = folder_ranking_study(layout, dataset, cfg)
    if study is None:
        return None
    run_split = study.signals["stability"]
    boosted = ConfusionMatrix(cfg.data.num_classes)
    for score in read_scores(layout.scores_path):
        relabelled = layout.pseudo_dir("stage1") / f"{score.image_id}.png"
        if not score.reliable and relabelled.exists():
            boosted.update(read_mask(dataset.mask_path(score.image_id)), read_mask(relabelled))
    return {
        "reliable_miou": run_split.split.reliable.pooled_miou,
        "unreliable_miou": run_split.split.unreliable.pooled_miou,
        "boosted_miou": round(100 * boosted.miou(), 2) if int(boosted.matrix.sum()) else None,
        "spearman": None if run_split.spearman is None else round(run_split.spearman, 3),
        "images": study.images,
        "seed": cfg.seed,
        "ranking_study": study_json(study, cfg.data.class_names),
    }


def _report(args, dataset: FolderDataset, device: torch.device, data, results: list[RunResult],
            earlier: dict | None) -> dict:
    methods: dict[str, dict] = {}
    for variant in {r.variant.name: r.variant for r in results}.values():
        rows = sorted((r for r in results if r.variant.name == variant.name), key=lambda r: r.seed)
        mious = [r.miou for r in rows if r.miou is not None]
        methods[variant.name] = {
            "method": variant.method,
            "ceiling": variant.ceiling,
            "miou": round(float(np.mean(mious)), 2) if mious else None,
            "miou_std": round(float(np.std(mious)), 2) if len(mious) > 1 else None,
            "miou_range": [min(mious), max(mious)] if len(mious) > 1 else None,
            "paired_gain": paired_gain(rows, [r for r in results if r.variant.name == "supervised"]),
            "per_class": rows[0].per_class if len(rows) == 1 else _mean_per_class(rows),
            "seconds": round(float(np.mean([r.seconds for r in rows])), 1),
            "stages": rows[0].stages if len(rows) == 1 else None,
            "seeds": [r.seed for r in rows],
            "overrides": list(variant.overrides),
            "runs": [str(r.run_dir) for r in rows],
            "per_seed": [{"seed": r.seed, "miou": r.miou, "per_class": r.per_class, "stages": r.stages,
                          "seconds": r.seconds, "run": str(r.run_dir), "config_hash": r.config_hash,
                          "device": r.device, "date": r.date} for r in rows],
        }
    # Pseudo-mask quality reads the run's masks, so it comes from the lowest seed of ST++ there is: the
    # earlier report's figures while their seed is a kept row, else a run on this machine.
    quality = (earlier or {}).get("pseudo_quality") or {}
    kept_seed = quality.get("seed") if quality.get("seed") in methods.get("st++", {}).get("seeds", []) else None
    local_stpp = sorted((r for r in results if r.variant.name == "st++" and RunLayout(r.run_dir).metrics_path.exists()),
                        key=lambda r: r.seed)
    if local_stpp and (kept_seed is None or local_stpp[0].seed <= kept_seed):
        quality = pseudo_quality(RunLayout(local_stpp[0].run_dir), dataset)
    elif kept_seed is None:
        quality = None
    cfg_hash = resolve_config(args.preset, "st++", args.overrides, args.device, data.classes).config_hash()
    return {
        "dataset": args.data.resolve().name,
        "split": args.split,
        "preset": args.preset,
        "overrides": args.overrides,
        "config_hash": cfg_hash,
        "device": _device_name(device),
        "devices": sorted({r.device for r in results if r.device}),
        "date": date.today().isoformat(),
        "labeled": len(data.labeled),
        "unlabeled": len(data.unlabeled),
        "val": len(data.val),
        "methods": methods,
        "pseudo_quality": quality,
        "command": "python -m stpp.bench quality " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["quality"] else sys.argv[1:]),
    }


def paired_gain(rows: list[RunResult], baseline: list[RunResult]) -> dict | None:
    """A variant's val mIoU minus SupOnly's of the same seed: per seed, and their mean and standard
    deviation (None for SupOnly itself, or without a SupOnly run of a shared seed)."""
    base = {r.seed: r.miou for r in baseline if r.miou is not None}
    gains = {r.seed: round(r.miou - base[r.seed], 2) for r in rows
             if r.miou is not None and r.seed in base and r.variant.name != "supervised"}
    if not gains:
        return None
    values = list(gains.values())
    return {"per_seed": {str(seed): gain for seed, gain in gains.items()}, "mean": round(float(np.mean(values)), 2),
            "std": round(float(np.std(values)), 2)}


def _mean_per_class(rows: list[RunResult]) -> dict:
    names = rows[0].per_class.keys()
    out = {}
    for name in names:
        values = [r.per_class.get(name) for r in rows if r.per_class.get(name) is not None]
        out[name] = round(float(np.mean(values)), 2) if values else None
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores)"


def to_markdown(report: dict) -> str:
    """The results as Markdown tables (methods, then pseudo-mask quality)."""
    devices = "; ".join(report.get("devices") or [report["device"]])
    lines = [f"{report['dataset']} {report['split']}, preset `{report['preset']}`, {devices}, {report['date']}",
             "", "| method | val mIoU (mean ± std over seeds) | gain over SupOnly, same seed | seeds | wall time |",
             "|---|---|---|---|---|"]
    for name, row in report["methods"].items():
        miou = "n/a" if row["miou"] is None else f"{row['miou']:.2f}"
        if row.get("miou_std") is not None:
            miou += f" ± {row['miou_std']:.2f} ({row['miou_range'][0]:.2f}–{row['miou_range'][1]:.2f})"
        gain = row.get("paired_gain")
        gain_text = "—" if not gain else f"{gain['mean']:+.2f}" + (
            f" ± {gain['std']:.2f} ({', '.join(f'{g:+.2f}' for g in gain['per_seed'].values())})"
            if len(gain["per_seed"]) > 1 else "")
        lines.append(f"| {name} | {miou} | {gain_text} | {','.join(map(str, row['seeds']))} | "
                     f"{row['seconds'] / 60:.1f} min |")
    quality = report.get("pseudo_quality")
    if quality:
        boosted = "n/a" if quality["boosted_miou"] is None else f"{quality['boosted_miou']:.2f}"
        lines += ["", "| pseudo masks (teacher) | mIoU vs ground truth |", "|---|---|",
                  f"| reliable half | {quality['reliable_miou']:.2f} |",
                  f"| unreliable half | {quality['unreliable_miou']:.2f} |",
                  f"| unreliable, re-labelled by stage 1 | {boosted} |",
                  "", f"Spearman(stability, per-image pseudo-mask mIoU) = {quality['spearman']} "
                      f"over {quality['images']} images"]
        if quality.get("ranking_study"):
            lines += ["", "Ranking study:", "", study_markdown(quality["ranking_study"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
