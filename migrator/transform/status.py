"""Counts for ``migrator transform status``: items per status, source and transformation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.state.models import TransformItem
from migrator.transform.hold import held_back_without_item


@dataclass(frozen=True)
class TransformProgress:
    """The state of every transform item."""

    #: Transformation -> status -> count.
    counts: dict[str, dict[str, int]]
    #: Source ("csv" or "legacy_db") -> status -> count.
    by_source: dict[str, dict[str, int]]
    #: Instances held back by the migration that ``migrator transform run`` has not imported yet.
    held_back: int
    #: The items with a status that ``--list`` named, in id order.
    listed: list[TransformItem] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for per_status in self.counts.values():
            for status, count in per_status.items():
                result[status] = result.get(status, 0) + count
        return result


def read_progress(session: Session, list_statuses: Sequence[str] = (), limit: int = 50) -> TransformProgress:
    """Count the items; list up to ``limit`` of those with a status in ``list_statuses``."""
    counts: dict[str, dict[str, int]] = {}
    by_source: dict[str, dict[str, int]] = {}
    rows = session.execute(select(TransformItem.transformation, TransformItem.source, TransformItem.status,
                                  func.count(TransformItem.id))
                           .group_by(TransformItem.transformation, TransformItem.source, TransformItem.status))
    for transformation, source, status, count in rows:
        per_transformation = counts.setdefault(transformation, {})
        per_transformation[status] = per_transformation.get(status, 0) + count
        per_source = by_source.setdefault(source, {})
        per_source[status] = per_source.get(status, 0) + count
    listed = []
    if list_statuses:
        listed = list(session.scalars(select(TransformItem).where(TransformItem.status.in_(list_statuses))
                                      .order_by(TransformItem.id).limit(limit)))
    return TransformProgress(counts, by_source, len(held_back_without_item(session)), listed)
