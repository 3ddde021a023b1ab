"""Review decisions in the store: per project, the latest per image wins, every earlier one is kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from stpp.store.db import Store, utc_now
from stpp.store.projects import Project

LOCAL_USER = "local"
"""The user recorded with a decision when nobody is signed in."""


@dataclass(frozen=True)
class Decision:
    """One review row.

    Attributes:
        id: the row id (later decisions have larger ids).
        image_id: the image row id.
        image: the image's name.
        run_id: the run whose masks were shown (None once that run is deleted).
        decision: ``accepted``, ``rejected`` or ``corrected``.
        mask_path: the ``reviewed`` mask file, relative to the workspace (None for rejected).
        stage: the stage whose pseudo mask was accepted; None for corrections and rejections.
        time: ISO 8601 UTC.
        user: who decided.
    """

    id: int
    image_id: int
    image: str
    run_id: int | None
    decision: str
    mask_path: str | None
    stage: str | None
    time: str
    user: str


_DECISION_SQL = ("SELECT r.id, r.image_id, i.name, r.run_id, r.decision, m.path, m.stage, r.time, r.user "
                 "FROM reviews r JOIN images i ON i.id = r.image_id LEFT JOIN masks m ON m.id = r.mask_id ")


def _decision(row: Sequence[Any]) -> Decision:
    return Decision(row[0], row[1], row[2], row[3], row[4], row[5], row[6] if row[4] == "accepted" else None,
                    row[7], row[8] or LOCAL_USER)


def insert_decision(store: Store, project: Project, image_id: int, run_id: int, decision: str,
                    mask_row: Mapping[str, Any] | None, user: str | None) -> Decision:
    """Record one decision, with the ``reviewed`` mask row it keeps (accepted, corrected), in one transaction."""
    with store.transaction() as db:
        mask_id = db["masks"].insert(dict(mask_row)).last_pk if mask_row is not None else None
        review_id = db["reviews"].insert({"project_id": project.id, "image_id": int(image_id), "run_id": int(run_id),
                                          "decision": decision, "mask_id": mask_id, "time": utc_now(),
                                          "user": (user or "").strip() or LOCAL_USER}).last_pk
    return _decision(store.db.execute(_DECISION_SQL + "WHERE r.id = ?", [review_id]).fetchone())


def latest_decisions(store: Store, project: Project) -> dict[str, Decision]:
    """Image name -> its latest decision, for every reviewed image of the project."""
    rows = store.db.execute(_DECISION_SQL + "WHERE r.id IN (SELECT max(id) FROM reviews WHERE project_id = ? "
                            "GROUP BY image_id)", [project.id]).fetchall()
    return {d.image: d for d in map(_decision, rows)}


def latest_decision(store: Store, image_id: int) -> Decision | None:
    """The image's latest decision, if it has one."""
    row = store.db.execute(_DECISION_SQL + "WHERE r.image_id = ? ORDER BY r.id DESC LIMIT 1",
                           [int(image_id)]).fetchone()
    return _decision(row) if row else None


def decision_history(store: Store, project: Project, image_id: int | None = None,
                     limit: int | None = None) -> list[Decision]:
    """The project's decisions, newest first (only ``image_id``'s when given; the last ``limit``)."""
    sql, params = _DECISION_SQL + "WHERE r.project_id = ?", [project.id]
    if image_id is not None:
        sql += " AND r.image_id = ?"
        params.append(int(image_id))
    sql += " ORDER BY r.id DESC" + (f" LIMIT {int(limit)}" if limit else "")
    return [_decision(row) for row in store.db.execute(sql, params)]


def last_review_id(store: Store, project: Project) -> int:
    """The id of the project's latest decision (0 when none): changes whenever someone decides."""
    return int(store.db.execute("SELECT max(id) FROM reviews WHERE project_id = ?", [project.id]).fetchone()[0] or 0)
