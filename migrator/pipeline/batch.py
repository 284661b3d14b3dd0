"""Migrating one batch: claim it, decide every instance, deliver, finish."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SKIP
from migrator.context import RunContext
from migrator.errors import StateError
from migrator.pipeline.decide import Decision, decide
from migrator.pipeline.deliver import BatchDestinations, deliver
from migrator.pipeline.dry_run import rehearse
from migrator.pipeline.lease import Lease, LeaseLost, claim
from migrator.pipeline.retry import backoff, finish_or_retry
from migrator.state.models import Instance, Outcome, StorageRoot

LOGGER = logging.getLogger(__name__)


@dataclass
class BatchResult:
    batch_id: int
    #: False when the batch is leased to another worker or already done.
    claimed: bool
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Instances that failed for a transient reason and wait for an automatic retry.
    retrying: int = 0
    #: True when the state database or Redis failed and the batch went back to the plan.
    interrupted: bool = False


def migrate_batch(context: RunContext, batch_id: int) -> BatchResult:
    """Migrate every instance of the batch that has no outcome yet.

    Instances that already have an outcome (sent before an interruption) are
    left alone, so running a batch again never sends anything twice. When
    the state database or Redis fails in the middle of the batch, the batch
    goes back to the plan for a later attempt instead of staying leased.

    Raises
    ------
    StateError
        The state database could not be reached to claim the batch; nothing was done.
    """
    with context.sessions() as session:
        try:
            lease = claim(session, batch_id, context.owner)
        except OperationalError as exc:
            raise StateError(f"cannot claim batch {batch_id}: the state database is unavailable "
                             f"({exc.orig})") from exc
        if lease is None:
            LOGGER.info("batch %d is done or leased to another worker; skipped", batch_id)
            return BatchResult(batch_id, claimed=False)
        try:
            return _migrate(context, session, lease)
        except LeaseLost as exc:
            LOGGER.warning("%s; this worker stops work on it", exc)
            return BatchResult(batch_id, claimed=False)
        except (SQLAlchemyError, RedisError) as exc:
            session.invalidate()
            delay = backoff(context.settings.retries, 1)
            LOGGER.error("batch %d stopped: %s; it goes back to the plan and is tried again in %d s",
                         batch_id, _describe(exc), delay)
            lease.give_back(context.sessions, audit.now() + timedelta(seconds=delay))
            return BatchResult(batch_id, claimed=True, interrupted=True)


def _rehearse(context: RunContext, session: Session, lease: Lease,
              by_target: dict[str, list[Decision]]) -> BatchResult:
    """Prepare every instance without sending it, then return the batch to the plan unchanged."""
    counts: Counter[str] = Counter()
    for target, group in by_target.items():
        counts.update(rehearse(context, session, lease, target, group))
    lease.put_back(session)
    LOGGER.info("batch %d rehearsed: %s", lease.batch_id, dict(counts))
    return BatchResult(lease.batch_id, claimed=True, outcomes=counts)


def _by_target(decisions: list[Decision]) -> dict[str, list[Decision]]:
    by_target: dict[str, list[Decision]] = {}
    for decision in decisions:
        by_target.setdefault(decision.route.to, []).append(decision)
    return by_target


def _by_study(decisions: list[Decision]) -> list[list[Decision]]:
    """Group decisions by the Study Instance UID the destination receives, in batch order.

    Each study's instances go to all of their destinations before the next
    study starts, so a study's non-pixel objects arrive with its images
    rather than after every image of the batch.
    """
    studies: dict[str, list[Decision]] = {}
    for decision in decisions:
        study = decision.reconciliation.values.get("StudyInstanceUID") or decision.instance.study_uid
        studies.setdefault(str(study or ""), []).append(decision)
    return list(studies.values())


def _describe(exc: Exception) -> str:
    if isinstance(exc, DBAPIError):
        return f"the state database failed: {exc.orig}"
    if isinstance(exc, SQLAlchemyError):
        return f"the state database failed: {exc}"
    return f"Redis failed: {exc}"


def _migrate(context: RunContext, session: Session, lease: Lease) -> BatchResult:
    batch_id = lease.batch_id
    rows = session.execute(
        select(Instance, StorageRoot.name)
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .where(Instance.batch_id == batch_id, Instance.outcome.is_(None))
        .order_by(Instance.study_uid, Instance.series_uid, Instance.rel_path)
    ).all()
    LOGGER.info("batch %d: %d instance(s) to migrate", batch_id, len(rows))
    decisions = decide(context, session, rows)
    if context.dry_run:
        return _rehearse(context, session, lease, _by_target(decisions))
    destinations = BatchDestinations()
    for study in _by_study(decisions):
        by_target = _by_target(study)
        for decision in by_target.pop(SKIP, []):
            audit.write(session, audit.Record(
                instance_id=decision.instance.id, batch_id=batch_id, outcome=Outcome.SKIPPED,
                reason=decision.route.reason, reconciliation=decision.reconciliation.outcome.value,
                route_rule=decision.route.rule), commit=False)
        session.commit()
        for target, group in by_target.items():
            deliver(context, session, lease, target, group, destinations)
    retrying = finish_or_retry(session, lease, context.settings.retries, context.breaker)
    # Count only the instances this call migrated, not earlier runs' outcomes,
    # and not those waiting for a retry.
    ids = [instance.id for instance, _ in rows]
    outcomes: Counter[str] = Counter()
    for start in range(0, len(ids), 1000):
        outcomes.update(outcome for outcome in session.scalars(
            select(Instance.outcome).where(Instance.id.in_(ids[start:start + 1000])))
            if outcome is not None)
    LOGGER.info("batch %d finished: %s", batch_id, dict(outcomes))
    return BatchResult(batch_id, claimed=True, outcomes=outcomes, retrying=retrying)
