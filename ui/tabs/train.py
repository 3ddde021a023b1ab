"""Train tab: launch a SupOnly / ST / ST++ run on a project and watch it live.

The run executes in a separate worker process; this tab only writes the request to the store
(through the job runner) and polls the store with a ``gr.Timer``, so closing the page or restarting
the app loses nothing.
"""

from __future__ import annotations

import html
import time

import gradio as gr
import pandas as pd

from stpp.core.cluster import RUN_SLURM_SETTINGS
from stpp.core.config import AMP_CHOICES, BACKBONES, PRESET_NOTES, ConfigError
from stpp.core.method import METHOD_LABELS, STAGES
from stpp.jobs import (
    FORM_FIELDS,
    SUBMITTING,
    WEIGHTS_DIR,
    add_weights_file,
    form_defaults,
    form_overrides,
    preset_names,
)
from stpp.store import StoreError, list_projects
from stpp.store.runs import (
    Run,
    RunEvent,
    estimate_eta,
    last_event_id,
    list_events,
    list_runs,
    loss_points,
    parse_time,
    run_metrics,
)
from ui.components import chosen_run, done_note, first_listed, run_label, run_picker
from ui.services import Services
from ui.urlstate import RUN_JS

TITLE = "Train"
POLL_S = 2.0
DEFAULT_PRESET = "tiny"
EVENTS_SHOWN = 12
STALE_HEARTBEAT_S = 60
EVENT_COLUMNS = ["time", "event", "stage", "step", "loss", "mIoU", "message"]
HISTORY_COLUMNS = ["run", "method", "preset", "device", "status", "stage", "progress", "val mIoU", "created",
                   "finished", "error"]
LOSS_COLUMNS = ["step", "loss", "stage"]
MIOU_COLUMNS = ["stage", "mIoU"]


# Formatting (pure: store rows in, display values out) ---------------------------------------------


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def metrics_text(metrics: dict[str, float | None]) -> str:
    """``teacher 41.20 · stage1 44.03``, or empty."""
    return " · ".join(f"{stage} {miou:.2f}" for stage, miou in metrics.items() if miou is not None)


def preset_text(name: str | None) -> str:
    """What the chosen preset is for and how long it takes."""
    return f"Preset {name}: {PRESET_NOTES[name]}." if name in PRESET_NOTES else ""


def status_markdown(services: Services, run: Run | None) -> str:
    """The headline of the live panel: run, status, stage, metrics, error."""
    if run is None:
        return "No run selected. Launch one above, or pick one from the project's runs."
    lines = [f"**Run {run.id}** · {METHOD_LABELS.get(run.method, run.method)} · preset `{run.preset}` · "
             f"{run.device} — status: **{run.status.replace('_', ' ')}**"
             + (" (resumable)" if run.can_resume else "")]
    if run.backend == "slurm" and run.job_id and run.job_id != SUBMITTING:
        waiting = ", waiting for Slurm to start it" if run.status == "queued" else ""
        lines.append(f"Slurm job `{run.job_id}`{waiting}")
    if run.stage:
        lines.append(f"Stage: `{run.stage}`")
    metrics = metrics_text(run_metrics(services.store, run.id))
    if metrics:
        lines.append(f"Validation mIoU (%): {metrics}")
    if run.error:
        lines.append(f"Error: {run.error}")
    return "  \n".join(lines)


def progress_html(services: Services, run: Run | None) -> str:
    """A progress bar with the percentage, the stage, the ETA and the heartbeat's age."""
    if run is None:
        return ""
    percent = 100 * run.progress
    notes = [f"{percent:.0f}%", run.status.replace("_", " ")]
    if run.status == "running":
        eta = estimate_eta(services.store, run)
        notes.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA —")
        if run.heartbeat:
            age = time.time() - parse_time(run.heartbeat)
            notes.append(f"heartbeat {format_duration(age)} ago" + (" (worker may be stuck)" if age > STALE_HEARTBEAT_S
                                                                      else ""))
    return (f'<div class="stpp-progress" data-progress="{run.progress:.4f}" data-status="{html.escape(run.status)}">'
            f'<div style="background:#e5e7eb;border-radius:6px;height:18px;overflow:hidden">'
            f'<div style="background:#f97316;height:100%;width:{percent:.1f}%"></div></div>'
            f'<div class="stpp-progress-text">{html.escape(" · ".join(notes))}</div></div>')


def events_frame(services: Services, run: Run | None) -> pd.DataFrame:
    """The run's last events, newest first."""
    if run is None:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    rows = [[e.time[11:19], e.kind, e.stage, f"{e.step}/{e.total}" if e.total and e.step is not None else "",
             "" if e.loss is None else f"{e.loss:.4f}", "" if e.miou is None else f"{e.miou:.2f}", event_text(e)]
            for e in reversed(list_events(services.store, run.id, limit=EVENTS_SHOWN))]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def event_text(event: RunEvent) -> str:
    """An event's message, with the peak GPU memory of the stage or pass it ends when it has one."""
    peak = event.data.get("peak_memory_mb")
    return event.message + (f" (peak GPU memory {peak:,.0f} MiB)" if peak is not None else "")


def stage_spans(points: list[tuple[str, int, float]]) -> dict[str, tuple[int, int]]:
    """Where each stage's steps lie on the run's joint step axis: its offset and its last step there."""
    ends: dict[str, int] = {}
    for stage, step, _ in points:
        ends[stage] = max(ends.get(stage, 0), step)
    spans, done = {}, 0
    for stage, end in ends.items():
        spans[stage], done = (done, done + end), done + end
    return spans


def loss_plot(services: Services, run: Run | None):
    """Training loss of the run, its stages one after the other on one step axis; the caption says where
    each stage's steps lie (``teacher: steps 1-99 · stage1: 100-153``)."""
    points = loss_points(services.store, run.id) if run is not None else []
    spans = stage_spans(points)
    rows = [[spans[stage][0] + step, loss, stage] for stage, step, loss in points]
    frame = pd.DataFrame(rows, columns=LOSS_COLUMNS).astype({"step": "int64", "loss": "float64", "stage": "object"})
    caption = " · ".join(f"{stage}: steps {start + 1}-{end}" for stage, (start, end) in spans.items())
    return gr.update(value=frame, caption=caption or None)


def miou_frame(services: Services, run: Run | None) -> pd.DataFrame:
    """Validation mIoU of the run after each stage."""
    metrics = run_metrics(services.store, run.id) if run is not None else {}
    # Numbered so the categorical axis keeps the stage order (teacher first).
    evaluated = sorted((stage for stage, miou in metrics.items() if miou is not None and stage in STAGES),
                       key=STAGES.index)
    rows = [[f"{position} {stage}", metrics[stage]] for position, stage in enumerate(evaluated, start=1)]
    return pd.DataFrame(rows, columns=MIOU_COLUMNS).astype({"stage": "object", "mIoU": "float64"})


def history_frame(services: Services, runs: list[Run]) -> pd.DataFrame:
    """One row per run of the project, newest first."""
    rows = []
    for run in runs:
        metrics = run_metrics(services.store, run.id)
        final = next((m for m in reversed(list(metrics.values())) if m is not None), None)
        rows.append([run.id, METHOD_LABELS.get(run.method, run.method), run.preset, run.device,
                     run.status.replace("_", " ") + (" (resumable)" if run.can_resume else ""), run.stage or "",
                     f"{100 * run.progress:.0f}%", "" if final is None else f"{final:.2f}",
                     run.created[:19].replace("T", " "), (run.finished or "")[:19].replace("T", " "), run.error or ""])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def project_runs(services: Services, project: str | None) -> list[Run]:
    """The project's runs, newest first (none without a project)."""
    try:
        return list_runs(services.store, project) if project else []
    except StoreError:
        return []


def run_update(runs: list[Run], run: Run | None):
    """The run dropdown: the project's runs, ``run`` selected."""
    return gr.update(choices=[(run_label(r), r.id) for r in runs], value=run.id if run else None)


def panel(services: Services, project: str | None, run_id: int | None, seen: dict | None,
          preferred: int | None = None) -> list:
    """Every output of the live panel, for ``preferred`` (the page's current run) when it is one of the
    project's runs, else ``run_id`` when it is, else the newest; parts unchanged since ``seen`` are skipped,
    so nothing redraws idly."""
    runs = project_runs(services, project)
    chosen = first_listed([r.id for r in runs], preferred, run_id)
    run = next((r for r in runs if r.id == chosen), None)
    seen = seen or {}
    key = {"run": run.id if run else None, "events": last_event_id(services.store, run.id) if run else 0,
           "statuses": [(r.id, r.status) for r in runs], "progress": [round(r.progress, 3) for r in runs]}
    changed = {part for part in key if key[part] != seen.get(part)}
    runs_changed = bool(changed & {"run", "statuses"})
    events_changed = bool(changed & {"run", "events"})
    skip = gr.skip()
    return [
        run_update(runs, run) if runs_changed else skip,
        status_markdown(services, run),
        progress_html(services, run),
        loss_plot(services, run) if events_changed else skip,
        miou_frame(services, run) if events_changed else skip,
        events_frame(services, run) if events_changed else skip,
        history_frame(services, runs) if changed else skip,
        gr.update(interactive=bool(run and run.unfinished)),
        gr.update(interactive=bool(run and run.can_resume)),
        key,
    ]


def project_choices(services: Services) -> list[str]:
    """Project names for the picker."""
    return [p.name for p in list_projects(services.store)]


def default_device(devices) -> str:
    """The first GPU when there is one, else the CPU."""
    return next((d.id for d in devices if d.id != "cpu"), "cpu")


# The tab ----------------------------------------------------------------------------------------


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """The launch form, the live panel (polled every :data:`POLL_S` s) and the project's run history."""
    defaults = form_defaults(DEFAULT_PRESET)
    devices = services.jobs.devices()
    gr.Markdown("Train a model on a project. **SupOnly** trains on the labelled images only; **ST** adds every "
                "unlabelled image with the teacher's pseudo masks; **ST++** first re-trains on the most reliable "
                "half (by stability across the teacher's checkpoints), re-labels the rest, and trains again. "
                "Training runs in its own process: you may close this page and come back.")
    with gr.Row():
        project = services.project_picker(label="Project", elem_id="train-project", scale=3)
        refresh = gr.Button("Refresh projects", size="sm", scale=1)
    with gr.Accordion("New run", open=True):
        with gr.Row():
            method = gr.Radio([(label, value) for value, label in METHOD_LABELS.items()], value="st++",
                              label="Method", elem_id="train-method")
            stage3 = gr.Checkbox(defaults["stage3"], label="ST++ stage 3 (re-label all, train again)",
                                 elem_id="train-stage3")
            preset = gr.Dropdown(preset_names(), value=DEFAULT_PRESET, label="Preset", elem_id="train-preset")
            backbone = gr.Dropdown(list(BACKBONES), value=defaults["backbone"], label="Backbone (DeepLabv3+)",
                                   elem_id="train-backbone")
        preset_note = gr.Markdown(preset_text(DEFAULT_PRESET), elem_id="train-preset-note")
        with gr.Row():
            epochs = gr.Number(defaults["epochs"], label="Teacher epochs", precision=0, minimum=1,
                               elem_id="train-epochs")
            student_epochs = gr.Number(defaults["student_epochs"], label="Student epochs", precision=0, minimum=1,
                                       elem_id="train-student-epochs")
            batch_size = gr.Number(defaults["batch_size"], label="Batch size", precision=0, minimum=1,
                                   elem_id="train-batch")
            crop_size = gr.Number(defaults["crop_size"], label="Crop size", precision=0, minimum=16,
                                  elem_id="train-crop")
            reliable_ratio = gr.Slider(0.05, 1.0, value=defaults["reliable_ratio"], step=0.05,
                                       label="Reliable ratio (ST++)", elem_id="train-ratio")
        with gr.Row():
            pretrained = gr.Textbox(defaults["pretrained"], label="ImageNet weights: imagenet (built-in MobileNetV2), "
                                    f"none, or a torchvision .pth file in the workspace's {WEIGHTS_DIR}/ folder",
                                    elem_id="train-weights")
            upload_weights = gr.UploadButton("Upload weights (.pth)", file_types=[".pth", ".pt"], size="sm",
                                             elem_id="train-weights-upload")
            tta = gr.Checkbox(defaults["tta"], label="Test-time augmentation for pseudo masks", elem_id="train-tta")
            amp = gr.Dropdown(list(AMP_CHOICES), value=defaults["amp"], label="Mixed precision (AMP)",
                              elem_id="train-amp")
            device = gr.Dropdown([(d.label, d.id) for d in devices], value=default_device(devices), label="Device",
                                 elem_id="train-device")
        # Always built, hidden on the local backend, so that the launch API takes the same inputs.
        slurm = services.jobs.backend.run_settings()
        with gr.Row(visible=bool(slurm), elem_id="train-slurm"):
            partition = gr.Textbox(slurm.get("partition") or "", label="Slurm partition (blank: the cluster's default)",
                                   elem_id="train-slurm-partition")
            account = gr.Textbox(slurm.get("account") or "", label="Account (blank: yours)",
                                 elem_id="train-slurm-account")
            time_limit = gr.Textbox(slurm.get("time_limit") or "", label="Time limit (8:00:00, 1-00:00:00)",
                                    elem_id="train-slurm-time")
            nodes = gr.Number(slurm.get("nodes", 1), label="Nodes", precision=0, minimum=1, elem_id="train-slurm-nodes")
        with gr.Row():
            review = gr.Checkbox(True, label="Review between phases (pause after the ranking and each re-labelling)",
                                 elem_id="train-review")
            launch = gr.Button("Launch training", variant="primary", elem_id="train-launch")
    message = gr.Markdown(elem_id="train-message")

    gr.Markdown("### Live run")
    run, current_run = run_picker(services, label="Run", elem_id="train-run")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.HTML(elem_id="train-progress")
    with gr.Row():
        cancel = gr.Button("Cancel run", variant="stop", interactive=False, elem_id="train-cancel")
        resume = gr.Button("Resume run", interactive=False, elem_id="train-resume")
    with gr.Row():
        # One series each: the browser keeps a chart's colour scale across value updates, so
        # series added later would not show.
        loss_plot = gr.LinePlot(None, x="step", y="loss", title="Training loss (stages in order)",
                                x_title="step (all stages)", tooltip="all", elem_id="train-loss")
        # Bars on a fixed 0-100 axis: one evaluated stage is one bar (a line of one point draws nothing).
        miou_plot = gr.BarPlot(None, x="stage", y="mIoU", title="Validation mIoU (%) after each stage",
                               y_lim=[0, 100], tooltip="all", elem_id="train-miou")
    events = gr.Dataframe(pd.DataFrame(columns=EVENT_COLUMNS), interactive=False, label="Last events",
                          elem_id="train-events")
    history = gr.Dataframe(pd.DataFrame(columns=HISTORY_COLUMNS), interactive=False, label="Runs of this project",
                           elem_id="train-history")
    seen = gr.State(None)
    timer = gr.Timer(POLL_S)
    panel_outputs = [run, status, progress, loss_plot, miou_plot, events, history, cancel, resume, seen]
    form = [backbone, pretrained, epochs, student_epochs, batch_size, crop_size, reliable_ratio, tta, amp, stage3]

    weights_dir = services.store.path(WEIGHTS_DIR)

    def fill_form(preset_name):
        values = form_defaults(preset_name)
        return [values[key] for key in FORM_FIELDS]

    def refresh_projects(current):
        names = project_choices(services)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    def start_run(project_name, method_value, preset_name, device_id, review_between, *values):
        if not project_name:
            return "**Not launched:** choose a project first.", gr.skip(), gr.skip()
        form_values, slurm_values = values[:len(form)], values[len(form):]
        try:
            overrides = form_overrides(*form_values, weights_dir=weights_dir)
            own = dict(zip(RUN_SLURM_SETTINGS, slurm_values)) if slurm else None
            started = services.jobs.launch(project_name, method_value, preset_name, overrides,
                                           device_id, review=review_between, backend_options=own)
        except (StoreError, ConfigError, ValueError) as error:
            gr.Warning(str(error))
            return f"**Not launched:** {error}", gr.skip(), gr.skip()
        return done_note(started.id, "launched"), run_update(project_runs(services, project_name), started), started.id

    def take_weights(upload):
        try:
            return add_weights_file(weights_dir, upload), ""
        except ConfigError as error:
            return gr.skip(), f"**Not uploaded:** {error}"

    def act(action, verb, done, run_id):
        if chosen_run(run_id) is None:
            return "Choose a run first."
        try:
            changed = action(chosen_run(run_id))
        except StoreError as error:
            return f"**Could not {verb}:** {error}"
        return done_note(changed.id, done)

    def show(project_name, run_id, preferred=None):
        return panel(services, project_name, run_id, None, preferred)

    def poll(project_name, run_id, state):
        services.jobs.tick()
        return panel(services, project_name, run_id, state)

    private = {"api_visibility": "private"}
    upload_weights.upload(take_weights, inputs=upload_weights, outputs=[pretrained, message], api_name="upload_weights")
    preset.change(fill_form, inputs=preset, outputs=form, **private).then(
        preset_text, inputs=preset, outputs=preset_note, **private)
    refresh.click(refresh_projects, inputs=project, outputs=project, **private)
    slurm_form = [partition, account, time_limit, nodes]  # RUN_SLURM_SETTINGS' order
    launch.click(start_run, inputs=[project, method, preset, device, review, *form, *slurm_form],
                 outputs=[message, run, current_run],
                 api_name="launch_run").then(show, inputs=[project, run], outputs=panel_outputs, **private).then(
        None, inputs=run, js=RUN_JS, **private)
    cancel.click(lambda r: act(services.jobs.cancel, "cancel", "asked to stop", r), inputs=run, outputs=message,
                 api_name="cancel_run").then(show, inputs=[project, run], outputs=panel_outputs, **private)
    resume.click(lambda r: act(services.jobs.resume, "resume", "resumed", r), inputs=run, outputs=message,
                 api_name="resume_run").then(show, inputs=[project, run], outputs=panel_outputs, **private)
    # Opening the page or the tab, or another project, shows the page's current run; a pick here shows the pick.
    gr.on([project.change] + ([shown.select] if shown is not None else []), show,
          inputs=[project, run, current_run], outputs=panel_outputs, **private)
    run.input(show, inputs=[project, run], outputs=panel_outputs, **private)
    gr.on(triggers=None, fn=show, inputs=[project, run], outputs=panel_outputs, **private)
    timer.tick(poll, inputs=[project, run, seen], outputs=panel_outputs, **private)
