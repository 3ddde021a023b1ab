"""A run's stability ranking in the store, read the ways the review pages and the reports read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from stpp.store.db import Store

RANK_FILTERS = ("all", "reliable", "unreliable", "accepted", "rejected", "corrected", "not reviewed")
"""Which of a run's ranked images to list: by the split at a cut, or by their latest decision."""


@dataclass(frozen=True)
class RankedImage:
    """One ranked image with its latest decision.

    Attributes:
        review_mask: the reviewed mask (workspace-relative) of an accepted or corrected image.
    """

    rank: int
    stability: float
    image_id: int
    name: str
    path: str
    decision: str | None
    review_mask: str | None


@dataclass(frozen=True)
class ImageScore:
    """One image's row of the run's ranking.

    Attributes:
        checkpoint_miou: agreement of each earlier teacher checkpoint's mask with the last one (None: NaN).
    """

    rank: int
    stability: float
    reliable: bool
    checkpoint_miou: tuple[float | None, ...]


_FROM = ("FROM scores s JOIN images i ON i.id = s.image_id "
         "LEFT JOIN reviews r ON r.id = (SELECT max(id) FROM reviews WHERE image_id = s.image_id) "
         "LEFT JOIN masks m ON m.id = r.mask_id WHERE s.run_id = ?")
_COLUMNS = ("SELECT s.rank, s.stability, i.id, i.name, i.path, r.decision, "
            "CASE WHEN r.decision IN ('accepted', 'corrected') THEN m.path END AS review_mask ")


def count_ranked(store: Store, run_id: int) -> int:
    """N: how many images the run ranked."""
    return store.db.execute("SELECT count(*) FROM scores WHERE run_id = ?", [int(run_id)]).fetchone()[0]


def _where(show: str, cut: int, min_score: float | None, max_score: float | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if show == "reliable":
        sql, params = " AND s.rank <= ?", [cut]
    elif show == "unreliable":
        sql, params = " AND s.rank > ?", [cut]
    elif show in ("accepted", "rejected", "corrected"):
        sql, params = " AND r.decision = ?", [show]
    elif show == "not reviewed":
        sql = " AND r.id IS NULL"
    elif show != "all":
        raise ValueError(f"unknown filter {show!r}; choose one of: {', '.join(RANK_FILTERS)}")
    if min_score is not None:
        sql, params = sql + " AND s.stability >= ?", params + [float(min_score)]
    if max_score is not None:
        sql, params = sql + " AND s.stability <= ?", params + [float(max_score)]
    return sql, params


def ranked_images(store: Store, run_id: int, show: str = "all", cut: int = 0, min_score: float | None = None,
                  max_score: float | None = None, most_stable_first: bool = True, limit: int | None = None,
                  offset: int = 0) -> list[RankedImage]:
    """The run's ranked images that pass the filter, in rank order.

    Args:
        show: one of :data:`RANK_FILTERS`; ``reliable`` means rank <= ``cut``.
        min_score / max_score: bounds on the stability score.
        limit / offset: one page of them.

    Raises:
        ValueError: an unknown filter.
    """
    where, params = _where(show, cut, min_score, max_score)
    sql = _COLUMNS + _FROM + where + f" ORDER BY s.rank {'ASC' if most_stable_first else 'DESC'}"
    params = [int(run_id), *params]
    if limit is not None:
        sql, params = sql + " LIMIT ? OFFSET ?", params + [int(limit), int(offset)]
    return [RankedImage(*row) for row in store.db.execute(sql, params)]


def count_ranked_images(store: Store, run_id: int, show: str = "all", cut: int = 0, min_score: float | None = None,
                        max_score: float | None = None) -> int:
    """How many of the run's ranked images pass the filter (see :func:`ranked_images`)."""
    where, params = _where(show, cut, min_score, max_score)
    return store.db.execute("SELECT count(*) " + _FROM + where, [int(run_id), *params]).fetchone()[0]


def image_score(store: Store, run_id: int, image_id: int) -> ImageScore | None:
    """The image's row of the run's ranking, if it was ranked."""
    row = store.db.execute("SELECT rank, stability, reliable, checkpoint_miou FROM scores WHERE run_id = ? "
                           "AND image_id = ?", [int(run_id), int(image_id)]).fetchone()
    if row is None:
        return None
    return ImageScore(row[0], row[1], bool(row[2]), tuple(json.loads(row[3])) if row[3] else ())


def ranks_by_name(store: Store, run_id: int) -> dict[str, int]:
    """Image name to rank, for every image the run ranked."""
    return dict(store.db.execute("SELECT i.name, s.rank FROM scores s JOIN images i ON i.id = s.image_id "
                                 "WHERE s.run_id = ?", [int(run_id)]).fetchall())


class RankedReference(NamedTuple):
    """One image a run ranked: its id and name, whether the run's split calls it reliable, and the
    workspace-relative path of its reference mask (None when it has none)."""

    image_id: int
    name: str
    reliable: bool
    path: str | None


def ranked_references(store: Store, run_id: int) -> list[RankedReference]:
    """Every image the run ranked, with its reference mask where it has one."""
    rows = store.db.execute(
        "SELECT s.image_id, i.name, s.reliable, ref.path FROM scores s JOIN images i ON i.id = s.image_id "
        "LEFT JOIN masks ref ON ref.image_id = s.image_id AND ref.kind = 'reference' WHERE s.run_id = ?",
        [int(run_id)])
    return [RankedReference(image_id, name, bool(reliable), path) for image_id, name, reliable, path in rows]
