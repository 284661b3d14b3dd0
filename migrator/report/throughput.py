"""Instances delivered per time bucket, overall, per storage root and per destination.

A delivery is an audit row with a delivered outcome (sent, sent with a
warning, sinbinned), counted at its ``finished_at``. The database groups
the rows by bucket, so only one row per bucket and series reaches Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import func, literal_column, select
from sqlalchemy.orm import Session

from migrator.report.sql import EpochSeconds, FloorInt, Window, as_utc
from migrator.state.models import DELIVERED, AuditEntry, Instance, StorageRoot

#: Bucket sizes in seconds: a second, a minute, 5 and 15 minutes, an hour, 6 hours, a day.
BUCKET_SECONDS = (1, 60, 300, 900, 3600, 21600, 86400)
#: The report takes the smallest bucket size that divides the run into fewer
#: parts than this; aligned to multiples of their size, the buckets then
#: number at most MAX_BUCKETS + 1.
MAX_BUCKETS = 400
#: The series name for deliveries recorded without a destination.
NO_DESTINATION = "(none)"

Key = TypeVar("Key")


def choose_bucket_seconds(span_seconds: float) -> int:
    """Return the smallest of BUCKET_SECONDS that divides ``span_seconds`` into fewer than MAX_BUCKETS parts.

    A run of MAX_BUCKETS days or more gets one-day buckets, and more of them.
    """
    for seconds in BUCKET_SECONDS:
        if span_seconds / seconds < MAX_BUCKETS:
            return seconds
    return BUCKET_SECONDS[-1]


@dataclass(frozen=True)
class Series:
    """Deliveries of one root, one destination, or all of them, per bucket."""

    name: str
    #: Instances delivered in each bucket of :attr:`Throughput.starts`.
    counts: list[int]
    #: Instances per hour from the run's first to its last delivery, pauses included.
    per_hour: float | None
    #: The start of the clock hour (UTC) with the maximum of deliveries, and that
    #: maximum. None when buckets are longer than an hour.
    busiest_hour: tuple[datetime, int] | None

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Throughput:
    bucket_seconds: int
    #: The start of each bucket (UTC). Buckets start at whole multiples of their size since 1970.
    starts: list[datetime]
    #: When the first delivered attempt started and the last one finished.
    first: datetime
    last: datetime
    overall: Series
    by_root: list[Series]
    by_destination: list[Series]


def read_throughput(session: Session, window: Window = Window()) -> Throughput | None:
    """Count deliveries per bucket within ``window``; None when there are none."""
    delivered = [AuditEntry.outcome.in_([outcome.value for outcome in DELIVERED]),
                 *window.conditions(AuditEntry.finished_at)]
    first_start, first_finish, last_finish = session.execute(
        select(func.min(AuditEntry.started_at), func.min(AuditEntry.finished_at),
               func.max(AuditEntry.finished_at)).where(*delivered)).one()
    if last_finish is None:
        return None
    first, last = as_utc(first_start), as_utc(last_finish)
    step = choose_bucket_seconds((last - as_utc(first_finish)).total_seconds())
    # The bucket size is an integer chosen above, so it can be literal SQL.
    # PostgreSQL can then match the grouped bucket with the selected one.
    bucket = FloorInt(EpochSeconds(AuditEntry.finished_at) / literal_column(str(step)))

    by_destination = _bucket_counts(session.execute(
        select(bucket, AuditEntry.destination, func.count(AuditEntry.id))
        .where(*delivered).group_by(bucket, AuditEntry.destination)))
    root_names = dict(session.execute(select(StorageRoot.id, StorageRoot.name)).all())
    by_root_id = _bucket_counts(session.execute(
        select(bucket, Instance.root_id, func.count(AuditEntry.id))
        .join(Instance, Instance.id == AuditEntry.instance_id)
        .where(*delivered).group_by(bucket, Instance.root_id)))

    buckets = [index for counts in by_destination.values() for index in counts]
    indexes = range(min(buckets), max(buckets) + 1)
    hours = (last - first).total_seconds() / 3600

    def series(name: str, counts: dict[int, int]) -> Series:
        return Series(name, [counts.get(index, 0) for index in indexes],
                      sum(counts.values()) / hours if hours > 0 else None,
                      _busiest_hour(counts, step))

    overall: dict[int, int] = {}
    for counts in by_destination.values():
        for index, count in counts.items():
            overall[index] = overall.get(index, 0) + count
    return Throughput(
        bucket_seconds=step,
        starts=[datetime.fromtimestamp(index * step, UTC) for index in indexes],
        first=first,
        last=last,
        overall=series("all", overall),
        by_root=[series(root_names.get(root_id, f"root {root_id}"), counts)
                 for root_id, counts in sorted(by_root_id.items(),
                                               key=lambda item: root_names.get(item[0], ""))],
        by_destination=[series(name or NO_DESTINATION, counts)
                        for name, counts in sorted(by_destination.items(), key=lambda item: item[0] or "")],
    )


def _bucket_counts(rows: Iterable[tuple[int, Key, int]]) -> dict[Key, dict[int, int]]:
    result: dict[Key, dict[int, int]] = {}
    for index, key, count in rows:
        result.setdefault(key, {})[int(index)] = count
    return result


def _busiest_hour(counts: dict[int, int], step: int) -> tuple[datetime, int] | None:
    if 3600 % step:
        return None
    per_hour: dict[int, int] = {}
    for index, count in counts.items():
        hour = index * step // 3600
        per_hour[hour] = per_hour.get(hour, 0) + count
    hour, count = max(per_hour.items(), key=lambda item: (item[1], -item[0]))
    return datetime.fromtimestamp(hour * 3600, UTC), count


def bucket_label(seconds: int) -> str:
    """Name a bucket size in words, e.g. "15 minutes"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{unit}" if count == 1 else f"{count} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"
