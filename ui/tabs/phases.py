"""Phases tab: what the next phase of a reviewed run trains on, the buttons that start it, the
decision history, the validation mIoU per stage, the pseudo-mask quality report and the ranking study
(how well the ranking sorts the pseudo masks, against the perfect ranking and random splits).

A run launched with review between phases waits (status *awaiting review*) after the stability
ranking and after each re-labelling; *Continue* queues it again and the worker runs to the next
pause. The tab polls the store with a ``gr.Timer``, so it follows the run without a reload.
"""

from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from stpp.selftrain.ranking_study import SIGNALS, figure_text
from stpp.services.outputs import teacher_signals_in_child
from stpp.services.quality import quality_report, run_ranking_study
from stpp.services.review import (
    ReviewError,
    continue_run,
    decision_history,
    pauses_reached,
    phase_summary,
)
from stpp.store import StoreError, get_project
from stpp.store.reviews import last_review_id
from stpp.store.runs import get_run, last_event_id, run_metrics
from ui.components import done_note, find_project, run_choices, run_picker
from ui.services import Services

TITLE = "Phases"
POLL_S = 3.0
COUNT_COLUMNS = ["next phase", "labelled", "reliable", "unreliable", "accepted", "rejected", "corrected", "R"]
HISTORY_COLUMNS = ["time", "user", "image", "decision", "run", "mask stage"]
MIOU_COLUMNS = ["stage", "val mIoU (%)"]
QUALITY_COLUMNS = ["pseudo masks", "group", "labelled by", "images", "mIoU (%)"]
STUDY_FIGURES = {"reliable_pooled_miou": "reliable mIoU (%)", "unreliable_pooled_miou": "unreliable mIoU (%)",
                 "gap": "gap", "share_of_perfect": "share of perfect gap", "reliable_image_miou": "reliable image mIoU",
                 "unreliable_image_miou": "unreliable image mIoU", "spearman": "Spearman with image mIoU"}
STUDY_COLUMNS = ["ranking", *STUDY_FIGURES.values()]
TRADE_COLUMNS = ["class", "reliable", "unreliable", "reliable (perfect)", "unreliable (perfect)"]
HISTORY_SHOWN = 200


# Formatting (store rows in, display values out) ---------------------------------------------------


def run_text(services: Services, run_id: int | None) -> str:
    """Status, review plan and pauses of a run."""
    if not run_id:
        return "Choose a project and a run."
    run = get_run(services.store, int(run_id))
    plan = run.review_plan
    reached = pauses_reached(services.store, run.id)
    lines = [f"**Run {run.id}** ({run.method}, preset `{run.preset}`) is **{run.status.replace('_', ' ')}**"
             + (f" · stage `{run.stage}`" if run.stage else "") + f" · {100 * run.progress:.0f}%"]
    lines.append("Review between phases: " + (f"pauses after {', '.join(plan)}" if plan else "off (runs to the end)")
                 + (f"; reached: {', '.join(reached)}" if reached else ""))
    if run.error:
        lines.append(f"Error: {run.error}")
    return "  \n".join(lines)


def counts_frame(services: Services, run_id: int | None) -> pd.DataFrame:
    """One row: what the next phase trains on."""
    if not run_id:
        return pd.DataFrame(columns=COUNT_COLUMNS)
    s = phase_summary(services.store, int(run_id))
    return pd.DataFrame([[s.next_phase or "—", s.labelled, s.reliable, s.unreliable,
                          s.accepted, s.rejected, s.corrected, s.reliable_ratio]], columns=COUNT_COLUMNS)


def history_frame(services: Services, project: str | None) -> pd.DataFrame:
    """The project's latest decisions, newest first."""
    if not find_project(services, project):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    rows = [[d.time[:19].replace("T", " "), d.user, d.image, d.decision, d.run_id or "", d.stage or ""]
            for d in decision_history(services.store, project, limit=HISTORY_SHOWN)]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def miou_frame(services: Services, run_id: int | None) -> pd.DataFrame:
    """Validation mIoU after each stage of the run."""
    metrics = run_metrics(services.store, int(run_id)) if run_id else {}
    return pd.DataFrame([[stage, "—" if m is None else f"{m:.2f}"] for stage, m in metrics.items()],
                        columns=MIOU_COLUMNS)


def quality_frames(services: Services, run_id: int | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The quality report as a table, the chart's data and a note."""
    empty = pd.DataFrame(columns=QUALITY_COLUMNS)
    if not run_id:
        return empty, pd.DataFrame(columns=["pseudo masks", "mIoU (%)"]), ""
    report = quality_report(services.store, int(run_id))
    if not report.rows:
        return empty, pd.DataFrame(columns=["pseudo masks", "mIoU (%)"]), (
            "No ranked image of this run has a reference mask, so pseudo-mask quality cannot be measured.")
    # Numbered, so the chart's categorical axis keeps the report's order.
    rows = [[f"{i} {r.group} · {r.labels}", r.group, r.labels, r.images, None if r.miou is None else round(r.miou, 2)]
            for i, r in enumerate(report.rows, start=1)]
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    note = (f"Measured on the {report.with_reference} of {report.ranked} ranked images that have a reference mask "
            "(reference masks are never used for training). *teacher*: the teacher's pseudo masks; *stage1*: the "
            "unreliable images after stage 1 re-labelled them.")
    return table, table[["pseudo masks", "mIoU (%)"]].astype({"mIoU (%)": "float64"}), note


def study_frames(services: Services, run_id: int | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The ranking study as a table (one row per ranking), the per-class IoU of each half, and a note."""
    empty = pd.DataFrame(columns=STUDY_COLUMNS), pd.DataFrame(columns=TRADE_COLUMNS)
    if not run_id:
        return *empty, ""
    study = run_ranking_study(services.store, int(run_id))
    if study is None:
        return *empty, "The ranking study needs two or more ranked images with reference masks."
    rows = [[row["ranking"], *(figure_text(row[key]) for key in STUDY_FIGURES)] for row in study.rows()]
    names = get_project(services.store, get_run(services.store, int(run_id)).project_id).classes.names
    split, perfect = study.signals["stability"].split, study.perfect
    trade = [[name, *map(figure_text, values)] for name, *values in zip(
        names, split.reliable.iou, split.unreliable.iou, perfect.reliable.iou, perfect.unreliable.iou)]
    signals = "; ".join(f"*{name}*: {SIGNALS[name]}" for name in study.signals)
    note = (f"{study.images} ranked images with reference masks; reliable: the top {study.reliable} (R = "
            f"{study.ratio:g}) of each ranking. {signals}; *perfect*: by each image's own pseudo-mask mIoU against its "
            f"reference (no ranking separates the mean image mIoU further); *random*: mean ± std over "
            f"{len(study.random)} seeded draws. "
            "Share of perfect gap: a ranking's reliable-minus-unreliable mIoU over the perfect ranking's. The class "
            "table shows, per class, the IoU of each half of the run's split and of the perfect split.")
    return pd.DataFrame(rows, columns=STUDY_COLUMNS), pd.DataFrame(trade, columns=TRADE_COLUMNS), note


def panel(services: Services, project: str | None, run_id: int | None, seen: dict | None) -> list:
    """Every output of the tab; parts unchanged since ``seen`` are skipped."""
    run = get_run(services.store, int(run_id)) if run_id else None
    opened = find_project(services, project)
    key = {"run": run_id, "status": run.status if run else None, "stage": run.stage if run else None,
           "events": last_event_id(services.store, int(run_id)) if run_id else 0,
           "reviews": last_review_id(services.store, opened) if opened else 0}
    if key == (seen or {}):
        return [gr.skip()] * 12 + [seen]
    quality, chart, note = quality_frames(services, run_id)
    paused = bool(run and run.status == "awaiting_review")
    return [run_text(services, run_id), counts_frame(services, run_id), miou_frame(services, run_id),
            history_frame(services, project), quality, chart, note, *study_frames(services, run_id),
            gr.update(interactive=paused), gr.update(interactive=paused), key]


# The tab ------------------------------------------------------------------------------------------


def build(services: Services, shown: gr.Tab | None = None) -> None:
    """Run picker, status, next-phase counts, continue buttons, mIoU table, history and quality report."""
    gr.Markdown("Follow a run through its phases. A run launched with **review between phases** stops after the "
                "stability ranking and after each re-labelling; review its masks in the *Review* tab, then continue "
                "here. Accepted and corrected images join the labelled set; rejected images leave the next phases.")
    with gr.Row():
        project = services.project_picker(label="Project", elem_id="phases-project", scale=2)
        run, current_run = run_picker(services, label="Run", elem_id="phases-run", scale=3)
        refresh = gr.Button("Refresh", size="sm", elem_id="phases-refresh", scale=1)
    status = gr.Markdown(elem_id="phases-status")
    counts = gr.Dataframe(pd.DataFrame(columns=COUNT_COLUMNS), interactive=False, label="Next phase trains on",
                          elem_id="phases-counts")
    with gr.Row():
        proceed = gr.Button("Continue to the next phase (pause again for review)", variant="primary",
                            interactive=False, elem_id="phases-continue")
        finish = gr.Button("Continue to the end (no more review)", interactive=False, elem_id="phases-finish")
    message = gr.Markdown(elem_id="phases-message")
    with gr.Row():
        miou = gr.Dataframe(pd.DataFrame(columns=MIOU_COLUMNS), interactive=False, label="Validation mIoU per stage",
                            elem_id="phases-miou")
        history = gr.Dataframe(pd.DataFrame(columns=HISTORY_COLUMNS), interactive=False, max_height=320,
                               label="Decisions (newest first; the latest per image counts)", elem_id="phases-history")
    with gr.Group(elem_id="phases-quality"):
        gr.Markdown("### Pseudo-mask quality (reliable vs unreliable)")
        with gr.Row():
            quality = gr.Dataframe(pd.DataFrame(columns=QUALITY_COLUMNS), interactive=False,
                                   label="mIoU of the pseudo masks against the reference masks",
                                   elem_id="phases-quality-table")
            chart = gr.BarPlot(None, x="pseudo masks", y="mIoU (%)", title="Pseudo-mask mIoU (%)", y_lim=[0, 100],
                               sort=None, elem_id="phases-quality-chart")
        quality_note = gr.Markdown(elem_id="phases-quality-note")
    with gr.Group(elem_id="phases-ranking"):
        gr.Markdown("### How well the ranking sorts the pseudo masks")
        study = gr.Dataframe(pd.DataFrame(columns=STUDY_COLUMNS), interactive=False,
                             label="Teacher pseudo masks of each half against the reference masks, per ranking",
                             elem_id="phases-ranking-table")
        trade = gr.Dataframe(pd.DataFrame(columns=TRADE_COLUMNS), interactive=False, max_height=320,
                             label="IoU (%) per class of each half", elem_id="phases-ranking-classes")
        study_note = gr.Markdown(elem_id="phases-ranking-note")
        with gr.Row():
            add_signals = gr.Button("Study the teacher's confidence and TTA agreement too", size="sm", scale=1,
                                    elem_id="phases-teacher-signals")
            signals_message = gr.Markdown("One pass of the final teacher over the ranked images, with every TTA "
                                          "view (minutes on a CPU for hundreds of images); kept in the run folder.",
                                          elem_id="phases-teacher-signals-message")
    seen = gr.State(None)
    timer = gr.Timer(POLL_S)
    outputs = [status, counts, miou, history, quality, chart, quality_note, study, trade, study_note, proceed, finish,
               seen]
    private = {"api_visibility": "private"}

    def show(project_name, run_id):
        return panel(services, project_name, run_id, None)

    def poll(project_name, run_id, state):
        services.jobs.tick()
        return panel(services, project_name, run_id, state)

    def go_on(run_id, review_next):
        try:
            run_ = continue_run(services.jobs, int(run_id), review_next=review_next)
        except (StoreError, ReviewError, TypeError) as error:
            return f"**Not continued:** {error}"
        return done_note(run_.id, "continued")

    def study_signals(run_id, progress=gr.Progress()):
        if not run_id:
            return "**Choose a run first.**", *[gr.skip()] * 3
        try:
            computed = teacher_signals_in_child(services.store, int(run_id), on_progress=lambda done, total: progress(
                (done, total), desc="teacher pass", unit="images"))
        except StoreError as error:
            return f"**Not computed:** {error}", *[gr.skip()] * 3
        return (f"Teacher signals computed for {computed} image(s)." if computed else
                "The run folder had the teacher's signals of every ranked image already."), *study_frames(
                    services, int(run_id))

    pick_run = functools.partial(run_choices, services)  # (project, current, preferred)
    project.change(pick_run, inputs=[project, run, current_run], outputs=run, **private)
    # Refresh and opening the tab re-read the runs: one launched since the page loaded is not listed yet.
    refresh_events = [refresh.click] + ([shown.select] if shown is not None else [])
    gr.on(refresh_events, pick_run, inputs=[project, run, current_run], outputs=run, **private).then(
        show, inputs=[project, run], outputs=outputs, **private)
    run.change(show, inputs=[project, run], outputs=outputs, **private)
    proceed.click(lambda r: go_on(r, True), inputs=run, outputs=message, api_name="continue_run").then(
        show, inputs=[project, run], outputs=outputs, **private)
    finish.click(lambda r: go_on(r, False), inputs=run, outputs=message, api_name="finish_run").then(
        show, inputs=[project, run], outputs=outputs, **private)
    add_signals.click(study_signals, inputs=run, outputs=[signals_message, study, trade, study_note],
                      api_name="teacher_signals")
    timer.tick(poll, inputs=[project, run, seen], outputs=outputs, **private)
