"""Returning failed instances to the plan, filtered by root, reason or time."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from migrator.state.models import (
    FINISHED,
    REPLANNED,
    AuditEntry,
    Batch,
    Instance,
    Outcome,
    StorageRoot,
)
from migrator.state.queries import last_attempts

CHUNK = 1000


def requeue_failed(session: Session, root: str | None = None, reason: str | None = None,
                   since: datetime | None = None) -> tuple[int, int]:
    """Reset matching failed instances and plan their batches again.

    Only batches that are done or failed are touched, so a batch leased to a
    running worker is left to it. Instances that were sent keep their
    outcome, so the next run sends only what failed. Returns (instances,
    batches) returned to the plan.
    """
    last = last_attempts(Instance.outcome == Outcome.FAILED.value)
    query = (select(Instance.id, Instance.batch_id)
             .select_from(last)
             .join(AuditEntry, AuditEntry.id == last.c.id)
             .join(Instance, Instance.id == AuditEntry.instance_id)
             .join(Batch, Batch.id == Instance.batch_id)
             .where(Batch.status.in_(FINISHED)))
    if root:
        query = query.join(StorageRoot, StorageRoot.id == Instance.root_id).where(StorageRoot.name == root)
    if reason:
        query = query.where(AuditEntry.reason.contains(reason))
    if since:
        moment = since if since.tzinfo else since.replace(tzinfo=UTC)
        query = query.where(AuditEntry.finished_at >= moment)
    rows = session.execute(query).all()
    instance_ids = [instance_id for instance_id, _ in rows]
    batch_ids = sorted({batch_id for _, batch_id in rows if batch_id is not None})
    for start in range(0, len(batch_ids), CHUNK):
        session.execute(update(Batch).where(Batch.id.in_(batch_ids[start:start + CHUNK]))
                        .values(REPLANNED))
    for start in range(0, len(instance_ids), CHUNK):
        session.execute(update(Instance).where(Instance.id.in_(instance_ids[start:start + CHUNK]))
                        .values(outcome=None))
    session.commit()
    return len(instance_ids), len(batch_ids)
