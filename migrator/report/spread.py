"""Per-study arrival spread: how long a study took to arrive complete.

A study's arrival spread is the time from the first to the last delivery
of its instances, counted at the ``finished_at`` of audit rows with a
delivered outcome (sent, sent with a warning, sinbinned), whatever the
destination. A study with one delivery has a spread of 0 s. An instance
released from the sin bin later adds that later delivery.

The database groups the audit rows by study and ranks the studies, so
Python receives a handful of rows and the histogram's counts, however many
audit rows there are.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Subquery, case, func, literal_column, or_, select
from sqlalchemy.orm import Session

from migrator.report.sql import SecondsBetween, Window, as_utc
from migrator.state.models import DELIVERED, AuditEntry, Instance

#: Upper edges in seconds of the histogram's bins: 1 s, 2 s, 5 s, ..., 1 day, 2 days, a week.
#: The first bin starts at 0 and the last one has no upper edge.
BIN_EDGES: tuple[int, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200,
                              86400, 172800, 604800)
#: Percentiles that :func:`arrival_spread` reports, as whole percents.
PERCENTILES = (50, 95)


@dataclass(frozen=True)
class StudySpread:
    study_uid: str
    seconds: float
    #: Delivered audit rows of the study: its instances, plus any delivered twice.
    deliveries: int
    first_arrival: datetime
    last_arrival: datetime


@dataclass(frozen=True)
class ArrivalSpread:
    """The distribution of arrival spreads over the studies with a delivery."""

    studies: int
    #: Percent -> seconds, interpolated linearly between the two nearest studies
    #: like PostgreSQL's percentile_cont and numpy.percentile; empty without studies.
    percentiles: dict[int, float]
    max_seconds: float | None
    #: Studies per bin of BIN_EDGES: len(BIN_EDGES) + 1 counts.
    histogram: list[int]
    #: The studies with the largest spread, largest first.
    largest: list[StudySpread]

    @property
    def median(self) -> float | None:
        return self.percentiles.get(50)


def arrival_spread(session: Session, since: datetime | None = None, until: datetime | None = None,
                   destinations: Collection[str] | None = None, top: int = 20) -> ArrivalSpread:
    """Compute the arrival spread of every study, summed up as percentiles, a histogram and a top list.

    Parameters
    ----------
    session
        A session on the state database, PostgreSQL or SQLite.
    since, until
        Count only deliveries that finished at or after ``since`` and before
        ``until``; a naive time is UTC.
    destinations
        Count only deliveries to these destinations (``sinbin`` for the sin bin).
    top
        How many of the studies with the largest spread to return.

    Raises
    ------
    ValueError
        ``since`` is not before ``until``.
    """
    conditions = [AuditEntry.outcome.in_([outcome.value for outcome in DELIVERED]),
                  Instance.study_uid.is_not(None),
                  *Window(since, until).conditions(AuditEntry.finished_at)]
    if destinations is not None:
        conditions.append(AuditEntry.destination.in_(list(destinations)))
    first, last = func.min(AuditEntry.finished_at), func.max(AuditEntry.finished_at)
    spreads = (select(Instance.study_uid.label("study_uid"), SecondsBetween(first, last).label("seconds"),
                      func.count(AuditEntry.id).label("deliveries"), first.label("first_arrival"),
                      last.label("last_arrival"))
               .join(Instance, Instance.id == AuditEntry.instance_id)
               .where(*conditions).group_by(Instance.study_uid).subquery("study_spread"))
    ranked = _ranked(session, spreads, top)
    if not ranked:
        return ArrivalSpread(0, {}, None, [0] * (len(BIN_EDGES) + 1), [])

    total = ranked[0][0]
    by_position = {position: study for _, position, study in ranked}
    percentiles = {}
    for percent in PERCENTILES:
        lower, remainder = divmod((total - 1) * percent, 100)
        value = by_position[lower].seconds
        if remainder:
            value += (by_position[lower + 1].seconds - value) * remainder / 100
        percentiles[percent] = value
    largest = [by_position[position] for position in range(total - 1, max(total - top, 0) - 1, -1)]
    return ArrivalSpread(total, percentiles, by_position[total - 1].seconds,
                         _histogram(session, spreads), largest)


def _ranked(session: Session, spreads: Subquery, top: int) -> list[tuple[int, int, StudySpread]]:
    """Fetch the studies at the percentile positions and the ``top`` largest, with the study count."""
    position = func.row_number().over(order_by=(spreads.c.seconds, spreads.c.study_uid)) - 1
    ranked = select(spreads, position.label("position"), func.count().over().label("total")).subquery("ranked")
    # Positions in integer arithmetic, the same in both databases and in Python:
    # the lower of the two studies around each percentile, and the one above it.
    kept = [ranked.c.position >= ranked.c.total - top]
    for percent in PERCENTILES:
        lower = (ranked.c.total - 1) * percent // 100
        kept.append(ranked.c.position.between(lower, lower + 1))
    rows = session.execute(select(ranked).where(or_(*kept)).order_by(ranked.c.position))
    return [(row.total, row.position,
             StudySpread(row.study_uid, float(row.seconds), row.deliveries, as_utc(row.first_arrival),
                         as_utc(row.last_arrival)))
            for row in rows]


def _histogram(session: Session, spreads: Subquery) -> list[int]:
    # Edges and indexes are integers written as literal SQL, not bound parameters,
    # so that PostgreSQL can match the grouped expression with the selected one.
    bin_index = case(*[(spreads.c.seconds < literal_column(str(edge)), literal_column(str(index)))
                       for index, edge in enumerate(BIN_EDGES)],
                     else_=literal_column(str(len(BIN_EDGES))))
    counts = [0] * (len(BIN_EDGES) + 1)
    for index, count in session.execute(select(bin_index, func.count()).group_by(bin_index)):
        counts[int(index)] = count
    return counts


def bin_labels(edges: Sequence[int] = BIN_EDGES) -> list[str]:
    """Name each histogram bin, e.g. "< 1 s", "1–2 s", "≥ 7 d"."""
    names = [format_seconds(edge) for edge in edges]
    return [f"< {names[0]}", *(f"{low}–{high}" for low, high in zip(names, names[1:])), f"≥ {names[-1]}"]


def format_seconds(seconds: float) -> str:
    """Write a duration in its largest whole unit: "45 s", "2 min", "6 h", "2 d"; else with decimals."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds == int(seconds) else f"{seconds:.3g} s"
