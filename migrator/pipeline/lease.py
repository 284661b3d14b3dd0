"""Batch leases in the state database.

A worker claims a batch with one atomic UPDATE before touching it, so a
batch runs in one place at a time even when two runs overlap or a message
is delivered twice. The lease is renewed while the batch runs; a lease that
is not renewed expires and another worker may take the batch over.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.errors import MigratorError
from migrator.state.models import Batch, BatchStatus, Instance

LOGGER = logging.getLogger(__name__)

#: How long a lease lasts without renewal. It must outlast the longest
#: single C-STORE (the DIMSE timeout) plus a new association.
LEASE = timedelta(minutes=10)
#: How often a worker tries to reach the state database to give a batch back.
GIVE_BACK_POLL_SECONDS = 2.0
#: How often a running batch renews its lease.
RENEW_EVERY = timedelta(seconds=30)


class LeaseLost(MigratorError):
    """Another worker took the batch over after this worker's lease expired."""


def claim(session: Session, batch_id: int, owner: str) -> Lease | None:
    """Take the batch's lease atomically; None if it is done or leased to another.

    A batch leased to a process of this host that no longer runs is taken
    over at once rather than after its lease expires: a worker killed in
    the middle of a batch is redelivered its message straight away.
    """
    now = audit.now()
    due = or_(Batch.retry_at.is_(None), Batch.retry_at <= now)
    claimable = or_(and_(Batch.status.in_([BatchStatus.PLANNED.value, BatchStatus.QUEUED.value]), due),
                    and_(Batch.status == BatchStatus.RUNNING.value, Batch.lease_expires < now))
    current = session.scalar(select(Batch.lease_owner).where(
        Batch.id == batch_id, Batch.status == BatchStatus.RUNNING.value))
    if current and owner_is_gone(current):
        LOGGER.warning("batch %d was leased to %s, which no longer runs; taking it over", batch_id, current)
        claimable = or_(claimable, Batch.lease_owner == current)
    result = session.execute(
        update(Batch).where(Batch.id == batch_id).where(claimable)
        .values(status=BatchStatus.RUNNING.value, lease_owner=owner, lease_expires=now + LEASE,
                attempts=Batch.attempts + 1, started_at=now)
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return Lease(batch_id, owner, now)


def owner_is_gone(owner: str | None) -> bool:
    """Tell whether a lease owner ("host:pid") is a process of this host that no longer runs."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != audit.HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    # A killed process whose parent died too stays a zombie where nothing
    # reaps orphans (a container without an init process); it runs no code.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False



class Lease:
    """A held batch lease, renewed by :meth:`renew` as work goes on."""

    def __init__(self, batch_id: int, owner: str, renewed_at: datetime) -> None:
        self.batch_id = batch_id
        self.owner = owner
        self.renewed_at = renewed_at

    def renew(self, session: Session) -> None:
        """Extend the lease if it is due.

        Raises
        ------
        LeaseLost
            The lease expired and another worker holds the batch now.
        """
        now = audit.now()
        if now - self.renewed_at < RENEW_EVERY:
            return
        result = session.execute(
            update(Batch).where(Batch.id == self.batch_id, Batch.lease_owner == self.owner)
            .values(lease_expires=now + LEASE))
        session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"batch {self.batch_id} was taken over by another worker")
        self.renewed_at = now

    def finish(self, session: Session) -> None:
        """Mark the batch done and release the lease."""
        self._release(session, status=BatchStatus.DONE.value, finished_at=audit.now())

    def fail(self, session: Session, reason: str) -> None:
        """Mark the batch failed with ``reason`` and release the lease."""
        self._release(session, status=BatchStatus.FAILED.value, finished_at=audit.now(),
                      failure_reason=reason)

    def retry_later(self, session: Session, retry_at: datetime, instance_ids: list[int],
                    count: bool = True) -> None:
        """Return the batch and ``instance_ids`` to the plan, not to be claimed before ``retry_at``.

        The batch and its instances change in one transaction, and only
        while this worker holds the lease. ``count`` adds one to the batch's
        automatic retries.
        """
        retries = Batch.retries + 1 if count else Batch.retries
        if self._release(session, commit=False, status=BatchStatus.PLANNED.value,
                         retry_at=retry_at, retries=retries):
            for start in range(0, len(instance_ids), 1000):
                session.execute(update(Instance).where(Instance.id.in_(instance_ids[start:start + 1000]))
                                .values(outcome=None))
        session.commit()

    def put_back(self, session: Session) -> None:
        """Return the batch to the plan as it was, for example after a dry run."""
        self._release(session, status=BatchStatus.PLANNED.value)

    def give_back(self, sessions: sessionmaker[Session], retry_at: datetime) -> None:
        """Return the batch to the plan after a failure of the state database or Redis.

        Tries with new connections until the state database responds, for at
        most the lease's length. After that the lease has expired, so
        another worker may take the batch over anyway.
        """
        deadline = time.monotonic() + LEASE.total_seconds()
        while True:
            try:
                with sessions() as session:
                    self._release(session, status=BatchStatus.PLANNED.value, retry_at=retry_at)
                return
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    LOGGER.error("batch %d: the state database is still unavailable (%s); its "
                                 "lease expires and another worker takes it over", self.batch_id, exc.orig)
                    return
                LOGGER.warning("batch %d: waiting for the state database to return it to the plan",
                               self.batch_id)
                time.sleep(GIVE_BACK_POLL_SECONDS)

    def _release(self, session: Session, commit: bool = True, **values: object) -> bool:
        result = session.execute(update(Batch)
                                 .where(Batch.id == self.batch_id, Batch.lease_owner == self.owner)
                                 .values(lease_owner=None, lease_expires=None, **values))
        if commit:
            session.commit()
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]
