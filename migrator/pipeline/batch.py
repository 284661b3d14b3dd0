"""Migrating one batch: claim it, decide every instance, deliver, finish."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SKIP
from migrator.context import RunContext
from migrator.pipeline.decide import Decision, decide
from migrator.pipeline.deliver import deliver
from migrator.state.models import Batch, BatchStatus, Instance, Outcome, StorageRoot

LOGGER = logging.getLogger(__name__)

#: How long a claimed batch stays with its worker before another may take it.
LEASE = timedelta(hours=1)


@dataclass
class BatchResult:
    batch_id: int
    #: False when the batch is leased to another worker or already done.
    claimed: bool
    outcomes: Counter[str] = field(default_factory=Counter)


def claim(session: Session, batch_id: int, owner: str) -> bool:
    """Take the batch's lease atomically; False if it is done or leased to another."""
    now = audit.now()
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .where(or_(Batch.status == BatchStatus.PLANNED.value,
                   and_(Batch.status == BatchStatus.RUNNING.value, Batch.lease_expires < now)))
        .values(status=BatchStatus.RUNNING.value, lease_owner=owner, lease_expires=now + LEASE,
                attempts=Batch.attempts + 1, started_at=now)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def _finish(session: Session, batch_id: int) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        status=BatchStatus.DONE.value, finished_at=audit.now(), lease_owner=None, lease_expires=None))
    session.commit()


def migrate_batch(context: RunContext, batch_id: int) -> BatchResult:
    """Migrate every instance of the batch that has no outcome yet.

    Instances that already have an outcome (sent before an interruption) are
    left alone, so running a batch again never sends anything twice.
    """
    with context.sessions() as session:
        if not claim(session, batch_id, context.owner):
            LOGGER.info("batch %d is done or held by another worker; skipped", batch_id)
            return BatchResult(batch_id, claimed=False)
        rows = session.execute(
            select(Instance, StorageRoot.name)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)
            .where(Instance.batch_id == batch_id, Instance.outcome.is_(None))
            .order_by(Instance.study_uid, Instance.series_uid, Instance.rel_path)
        ).all()
        LOGGER.info("batch %d: %d instance(s) to migrate", batch_id, len(rows))
        decisions = decide(context, session, rows)
        by_target: dict[str, list[Decision]] = {}
        for decision in decisions:
            by_target.setdefault(decision.route.to, []).append(decision)
        for decision in by_target.pop(SKIP, []):
            audit.write(session, audit.Record(
                instance_id=decision.instance.id, batch_id=batch_id, outcome=Outcome.SKIPPED,
                reason=decision.route.reason, reconciliation=decision.reconciliation.outcome.value,
                route_rule=decision.route.rule), commit=False)
        session.commit()
        for target, group in by_target.items():
            deliver(context, session, batch_id, target, group)
        _finish(session, batch_id)
        outcomes = Counter(
            outcome for (outcome,) in session.execute(
                select(Instance.outcome).where(Instance.batch_id == batch_id))
        )
    LOGGER.info("batch %d finished: %s", batch_id, dict(outcomes))
    return BatchResult(batch_id, claimed=True, outcomes=outcomes)
