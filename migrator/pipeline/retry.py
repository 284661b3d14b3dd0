"""Automatic retries of a batch whose instances failed for a transient reason.

A transient failure is one that a later attempt may not meet: the
association failed, no C-STORE response arrived in time, or the
destination was out of resources (0xA7xx). After each run of a batch its
transiently failed instances go back to the plan with exponential backoff,
and only those are sent again. Once ``retries.max_retries`` are used up
the batch is marked failed with the most frequent reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import RetryConfig
from migrator.dicom.breaker import CircuitBreaker
from migrator.pipeline.lease import Lease
from migrator.state.models import AuditEntry, Batch, Instance, Outcome
from migrator.state.queries import last_attempts

LOGGER = logging.getLogger(__name__)


def backoff(config: RetryConfig, retry: int) -> int:
    """Return the wait in seconds before automatic retry number ``retry``, counted from 1."""
    return int(get_exponential_backoff_interval(config.backoff_seconds, retry - 1,
                                                config.max_backoff_seconds))


def transient_failures(session: Session, batch_id: int) -> list[tuple[int, str | None, str]]:
    """Return (instance id, destination, reason) of the batch's instances whose last attempt failed transiently."""
    last = last_attempts(Instance.batch_id == batch_id, Instance.outcome == Outcome.FAILED.value)
    rows = session.execute(
        select(AuditEntry.instance_id, AuditEntry.destination, AuditEntry.reason)
        .join(last, last.c.id == AuditEntry.id)
        .where(AuditEntry.transient.is_(True)))
    return [(instance_id, destination, reason or "") for instance_id, destination, reason in rows]


def finish_or_retry(session: Session, lease: Lease, config: RetryConfig,
                    breaker: CircuitBreaker | None = None) -> int:
    """Finish the batch, schedule its retry, or mark it failed after the last retry.

    When every transient failure is at a destination whose circuit breaker
    is open, those instances were not tried: the batch waits until the
    circuit closes, and that wait does not count as a retry.
    Returns how many instances went back to the plan for a retry.
    """
    failures = transient_failures(session, lease.batch_id)
    if not failures:
        lease.finish(session)
        return 0
    ids = [instance_id for instance_id, _, _ in failures]
    reason = Counter(reason for _, _, reason in failures).most_common(1)[0][0]
    retries = session.scalar(select(Batch.retries).where(Batch.id == lease.batch_id)) or 0
    circuit_wait = _circuit_wait(breaker, {destination for _, destination, _ in failures})
    if circuit_wait and retries < config.max_retries:
        lease.retry_later(session, audit.now() + timedelta(seconds=circuit_wait), ids, count=False)
        LOGGER.warning("batch %d: %d instance(s) wait %d s for the circuit breaker to close",
                       lease.batch_id, len(ids), circuit_wait)
        return len(ids)
    if retries >= config.max_retries:
        lease.fail(session, f"{len(ids)} instance(s) still failed after {retries} automatic "
                            f"retries: {reason}")
        LOGGER.error("batch %d failed: %d instance(s) still failed after %d automatic retries (%s); "
                     "'migrator requeue' returns them to the plan", lease.batch_id, len(ids),
                     retries, reason)
        return 0
    delay = backoff(config, retries + 1)
    lease.retry_later(session, audit.now() + timedelta(seconds=delay), ids)
    LOGGER.warning("batch %d: %d instance(s) failed for a transient reason (%s); retry %d of %d "
                   "in %d s", lease.batch_id, len(ids), reason, retries + 1, config.max_retries,
                   delay)
    return len(ids)


def _circuit_wait(breaker: CircuitBreaker | None, destinations: set[str | None]) -> int:
    """Return the seconds until every circuit of ``destinations`` closes; 0 if one is closed."""
    if breaker is None or None in destinations:
        return 0
    waits = [breaker.remaining(destination) for destination in destinations if destination]
    return max(waits) + 1 if waits and min(waits) > 0 else 0
