"""Export tab: a project's labelled dataset (ground truth, reviewed and pseudo masks) as a zip, and
a run's trained model (checkpoint, config and a TorchScript file that runs without stpp).

The dataset zip is written by :func:`stpp.store.export.export_project` here (no torch); its summary,
with the manifest folded under it, is shown before the download button appears. The model is exported
by a child process.
"""

from __future__ import annotations

import json

import gradio as gr

from stpp.core.method import METHOD_LABELS
from stpp.services.outputs import export_dataset, export_model_zip
from stpp.store import StoreError
from stpp.store.export import ExportFilter
from stpp.store.export_formats import FORMATS
from stpp.store.runs import run_stages
from ui.components import chosen_run, run_choices, run_picker
from ui.services import Services

TITLE = "Export"
LATEST = "latest"
NO_RUN = "no run (ground truth and reviewed masks only)"
GROUPS = {"ground truth": "ground_truth", "accepted": "accepted", "corrected": "corrected",
          "reliable (not reviewed)": "reliable", "unreliable (not reviewed)": "unreliable"}
FORMAT_LABELS = {"voc": "Pascal VOC", "coco": "COCO (RLE)", "masks": "per-class masks", "overlays": "overlays (JPEG)"}


def stage_update(services: Services, run_id, models_only: bool = False, current: str | None = None):
    """The stage dropdown for a run: ``latest`` then its stages; ``current`` is kept when it is one of them."""
    stages = run_stages(services.store, chosen_run(run_id), models_only) if chosen_run(run_id) else []
    return gr.update(choices=[LATEST, *stages], value=current if current in stages else LATEST)


def manifest_summary(manifest: dict) -> str:
    """What an export holds, in a few lines: counts, the run and model its labels came from, the filter."""
    counts = manifest["counts"]
    splits = " · ".join(f"{split} {n}" for split, n in counts["splits"].items())
    lines = [f"**{counts['images']} image(s)** as {FORMAT_LABELS.get(manifest['format'], manifest['format'])} · "
             f"{splits} · left out {sum(counts['left_out'].values())}"]
    sources = " · ".join(f"{source.replace('_', ' ')} {n}" for source, n in counts["sources"].items() if n)
    if sources:
        lines.append(f"Masks: {sources}")
    run = manifest["run"]
    if run is not None:
        stages = ", ".join(f"{stage} {n}" for stage, n in counts["pseudo_stages"].items())
        lines.append(f"Run {run['id']} ({METHOD_LABELS.get(run['method'], run['method'])}, preset `{run['preset']}`, "
                     f"{run['status'].replace('_', ' ')})" + (f" · pseudo masks by stage: {stages}" if stages else "")
                     + (f" · model `{manifest['model_checkpoint']}`" if manifest["model_checkpoint"] else ""))
    kept = [label for label, field in GROUPS.items() if manifest["filter"][field]]
    bound = manifest["filter"]["min_stability"]
    lines.append(f"Kept: {', '.join(kept) or 'nothing'}" + (f" · min stability {bound:g}" if bound is not None else "")
                 + (" · reference masks of unlabelled images" if manifest["include_reference"] else ""))
    return "  \n".join(lines)


def export_filter(groups: list[str], min_stability) -> ExportFilter:
    """The filter for the ticked groups and the stability bound."""
    chosen = {GROUPS[g] for g in groups or []}
    return ExportFilter(**{field: field in chosen for field in GROUPS.values()},
                        min_stability=None if min_stability in (None, "") else float(min_stability))


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """Dataset export (format, run, stage, filter → manifest → download) and model export."""
    gr.Markdown("Export a project as a labelled dataset: ground-truth masks, the masks people accepted or corrected, "
                "and a run's pseudo masks for the rest (rejected images are left out). Every zip holds a "
                "`manifest.json` (project, classes, run, stage, model checkpoint, config hash, filter, counts) "
                "and the run's `scores.csv`.")
    with gr.Row():
        project = services.project_picker(label="Project", elem_id="export-project")
        run, current_run = run_picker(services, label="Run", elem_id="export-run")
        stage = gr.Dropdown([LATEST], value=LATEST, label="Masks as they stood after stage", elem_id="export-stage")
    with gr.Row():
        fmt = gr.Radio([(label, key) for key, label in FORMAT_LABELS.items() if key in FORMATS], value="voc",
                       label="Format", elem_id="export-format")
        groups = gr.CheckboxGroup(list(GROUPS), value=list(GROUPS), label="Include", elem_id="export-groups")
        min_stability = gr.Number(None, label="Min stability of pseudo masks", elem_id="export-min-stability")
        reference = gr.Checkbox(False, label="Use reference masks of unlabelled images (demo only)",
                                elem_id="export-reference")
        unfinished = gr.Checkbox(False, label="Allow an unfinished run (failed, cancelled or running: its pseudo "
                                 "masks are partial)", elem_id="export-allow-unfinished")
    build_button = gr.Button("Build export", variant="primary", elem_id="export-build")
    message = gr.Markdown(elem_id="export-message")
    with gr.Accordion("The full manifest.json", open=False, elem_id="export-manifest-panel"):
        manifest = gr.Code(None, language="json", label="manifest.json", elem_id="export-manifest")
    download = gr.DownloadButton("Download the zip", visible=False, elem_id="export-download")
    gr.Markdown("### Trained model")
    with gr.Row():
        model_stage = gr.Dropdown([LATEST], value=LATEST, label="Stage", elem_id="export-model-stage")
        model_button = gr.Button("Export model (checkpoint + TorchScript)", elem_id="export-model")
    model_message = gr.Markdown(elem_id="export-model-message")
    model_download = gr.DownloadButton("Download the model", visible=False, elem_id="export-model-download")
    private = {"api_visibility": "private"}

    def pick_run(project_name, current, preferred):
        update = run_choices(services, project_name, current, preferred=preferred)
        return gr.update(choices=[(NO_RUN, 0), *update["choices"]], value=update["value"] or 0)

    def make(project_name, run_id, stage_name, fmt_key, ticked, bound, use_reference, unfinished):
        try:
            report = export_dataset(services.store, project_name, fmt_key, run_id=chosen_run(run_id),
                                    stage=None if stage_name == LATEST else stage_name,
                                    filter=export_filter(ticked, bound), include_reference=use_reference,
                                    allow_unfinished=unfinished)
        except (StoreError, ValueError) as error:
            return f"**Not exported:** {error}", None, gr.update(visible=False)
        return (manifest_summary(report.manifest), json.dumps(report.manifest, indent=2),
                gr.update(value=str(report.path), visible=True))

    def make_model(run_id, stage_name):
        if chosen_run(run_id) is None:
            return "**Choose a run.**", gr.update(visible=False)
        try:
            path = export_model_zip(services.store, chosen_run(run_id), None if stage_name == LATEST else stage_name)
        except StoreError as error:
            return f"**Not exported:** {error}", gr.update(visible=False)
        return f"Model exported: `{path.name}`.", gr.update(value=str(path), visible=True)

    project.change(pick_run, inputs=[project, run, current_run], outputs=run, **private)
    run.change(lambda r: (stage_update(services, r), stage_update(services, r, True)), inputs=run,
               outputs=[stage, model_stage], **private)
    if shown is not None:  # runs launched, finished or relabelled while the tab was hidden
        shown.select(pick_run, inputs=[project, run, current_run], outputs=run, **private).then(
            lambda r, s, m: (stage_update(services, r, current=s), stage_update(services, r, True, current=m)),
            inputs=[run, stage, model_stage], outputs=[stage, model_stage], **private)
    build_button.click(make, inputs=[project, run, stage, fmt, groups, min_stability, reference, unfinished],
                       outputs=[message, manifest, download], api_name="export_dataset")
    model_button.click(make_model, inputs=[run, model_stage], outputs=[model_message, model_download],
                       api_name="export_model")
