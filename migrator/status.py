"""Counts for ``migrator status``: outcomes overall and per root, and the rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.audit import now
from migrator.state.models import (
    DELIVERED,
    AuditEntry,
    Batch,
    BatchStatus,
    Instance,
    Outcome,
    StorageRoot,
)
from migrator.state.queries import last_attempts

PENDING = "pending"


@dataclass(frozen=True)
class Status:
    #: root name -> outcome (or "pending") -> count
    by_root: dict[str, dict[str, int]]
    #: Instances delivered per hour between the first and the last delivery.
    images_per_hour: float | None
    #: Instances delivered in the hour before the status was read.
    last_hour: int = 0
    #: The same, per storage root and per destination (the sin bin included).
    last_hour_by_root: dict[str, int] = field(default_factory=dict)
    last_hour_by_destination: dict[str, int] = field(default_factory=dict)
    #: Batch status ("planned", "queued", "running", "done", "failed") -> count.
    batches: dict[str, int] = field(default_factory=dict)
    #: Batches with at least one failed instance.
    batches_with_failures: int = 0
    #: Planned batches that wait for an automatic retry after transient failures.
    batches_retrying: int = 0

    def eta_hours(self) -> float | None:
        """Estimate the hours left at the last hour's rate; None without a rate."""
        pending = self.totals().get(PENDING, 0)
        if not pending:
            return 0.0
        return pending / self.last_hour if self.last_hour else None

    def totals(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for counts in self.by_root.values():
            for outcome, count in counts.items():
                result[outcome] = result.get(outcome, 0) + count
        return result


def read_status(session: Session) -> Status:
    by_root: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(StorageRoot.name, Instance.outcome, func.count(Instance.id))
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .group_by(StorageRoot.name, Instance.outcome))
    for root, outcome, count in rows:
        by_root.setdefault(root, {})[outcome or PENDING] = count
    delivered = [outcome.value for outcome in DELIVERED]
    first, last, count = session.execute(
        select(func.min(AuditEntry.started_at), func.max(AuditEntry.finished_at), func.count(AuditEntry.id))
        .where(AuditEntry.outcome.in_(delivered))).one()
    rate = None
    if count and first and last and last > first:
        rate = count / ((last - first).total_seconds() / 3600)
    recent = (AuditEntry.outcome.in_(delivered), AuditEntry.finished_at >= now() - timedelta(hours=1))
    by_root_recent = dict(session.execute(
        select(StorageRoot.name, func.count(AuditEntry.id))
        .join(Instance, Instance.id == AuditEntry.instance_id)
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .where(*recent).group_by(StorageRoot.name)).all())
    by_destination_recent = dict(session.execute(
        select(AuditEntry.destination, func.count(AuditEntry.id))
        .where(*recent).group_by(AuditEntry.destination)).all())
    batches = dict(session.execute(select(Batch.status, func.count(Batch.id)).group_by(Batch.status)).all())
    with_failures = session.scalar(
        select(func.count(func.distinct(Instance.batch_id))).where(Instance.outcome == Outcome.FAILED.value))
    retrying = session.scalar(select(func.count(Batch.id)).where(
        Batch.status == BatchStatus.PLANNED.value, Batch.retry_at.is_not(None)))
    return Status(by_root, rate, sum(by_root_recent.values()), by_root_recent,
                  {str(name): count for name, count in by_destination_recent.items()}, batches,
                  with_failures or 0, retrying or 0)


@dataclass(frozen=True)
class FailedInstance:
    instance_id: int
    root: str
    rel_path: str
    destination: str | None
    reason: str | None


def failed_instances(session: Session, limit: int) -> list[FailedInstance]:
    """Return up to ``limit`` failed instances with the reason of their last attempt."""
    last = last_attempts(Instance.outcome == Outcome.FAILED.value)
    rows = session.execute(
        select(Instance.id, StorageRoot.name, Instance.rel_path, AuditEntry.destination, AuditEntry.reason)
        .select_from(last)
        .join(AuditEntry, AuditEntry.id == last.c.id)
        .join(Instance, Instance.id == AuditEntry.instance_id)
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .order_by(Instance.id).limit(limit))
    return [FailedInstance(*row) for row in rows]
