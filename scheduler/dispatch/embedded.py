"""The embedded mode: planned batches on a local process pool, no broker.

Each pool process opens its own databases once and runs the same
``migrate_batch`` that the Celery workers run. Batches are claimed through
leases in the state database, so two overlapping runs share the work
instead of doing it twice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from multiprocessing import get_context

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.config import Settings
from migrator.context import RunContext
from migrator.controls import is_paused
from migrator.errors import MigratorError
from migrator.pipeline import BatchResult, migrate_batch
from migrator.pipeline.lease import owner_is_gone
from migrator.state.models import Batch, BatchStatus, Instance, Outcome
from scheduler.dispatch.preflight import check_legacy_matches

LOGGER = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: How often a paused run checks whether it was resumed.
PAUSE_POLL_SECONDS = 2.0

_CONTEXT: RunContext | None = None


def _die_with_parent() -> None:
    # A pool process left running after `migrator start` was killed would
    # keep sending while a new run starts; Linux can kill it with its parent.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        LOGGER.debug("prctl(PR_SET_PDEATHSIG) is not available on this system")


def _init_process(settings: Settings, parent: int) -> None:
    global _CONTEXT
    _die_with_parent()
    # Ctrl-C ends a pool process at once instead of raising KeyboardInterrupt,
    # which the pool would catch before taking the next batch.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect
    _CONTEXT = RunContext.open(settings)


def _run_batch(batch_id: int) -> BatchResult:
    assert _CONTEXT is not None, "pool process was not initialised"
    return migrate_batch(_CONTEXT, batch_id)


def prepare(session: Session, retry_failed: bool) -> int:
    """Return interrupted batches to the plan and, if asked, failed instances too.

    A running batch goes back to the plan when its lease expired or its
    owner was a process of this host that no longer runs (Ctrl-C, a kill,
    a crash). Returns how many running batches other live processes hold.
    """
    now = audit.now()
    held = 0
    for batch_id, owner, expires in session.execute(
            select(Batch.id, Batch.lease_owner, Batch.lease_expires)
            .where(Batch.status == BatchStatus.RUNNING.value)):
        if owner_is_gone(owner) or (expires is not None and _aware(expires) < now):
            session.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner)
                            .values(status=BatchStatus.PLANNED.value, lease_owner=None,
                                    lease_expires=None))
        else:
            held += 1
    if retry_failed:
        # Only batches that are done: a batch still leased to another run
        # would be marked done by that run with the reset instances left pending. The
        # batches go back to the plan first, then their failed instances.
        failed_batches = select(Instance.batch_id).where(Instance.outcome == Outcome.FAILED.value)
        session.execute(update(Batch).where(Batch.status == BatchStatus.DONE.value,
                                            Batch.id.in_(failed_batches))
                        .values(status=BatchStatus.PLANNED.value))
        planned = select(Batch.id).where(Batch.status == BatchStatus.PLANNED.value)
        session.execute(update(Instance).where(Instance.outcome == Outcome.FAILED.value,
                                               Instance.batch_id.in_(planned))
                        .values(outcome=None))
    session.commit()
    return held


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def planned_batches(session: Session) -> list[tuple[int, int]]:
    """Return (batch id, instances without outcome) in stripe order, the roots interleaved."""
    pending = (select(func.count(Instance.id)).where(Instance.batch_id == Batch.id,
                                                     Instance.outcome.is_(None))
               .correlate(Batch).scalar_subquery())
    rows = session.execute(select(Batch.id, pending)
                           .where(Batch.status == BatchStatus.PLANNED.value)
                           .order_by(Batch.seq, Batch.root_id)).all()
    return [(batch_id, count) for batch_id, count in rows]


def run_embedded(settings: Settings, sessions: sessionmaker[Session], retry_failed: bool = False,
                 on_batch: Callable[[BatchResult, int], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> Counter[str]:
    """Migrate every planned batch; return the outcome counts of this run.

    Parameters
    ----------
    on_batch
        Called after each batch with its result and its pending instance count.
    on_start
        Called once with the number of instances this run will migrate.

    Raises
    ------
    MigratorError
        The configuration or a database cannot be used, or a pool process died.
    """
    # Opening the context here fails once with a clear message, not in every process.
    context = RunContext.open(settings)
    with sessions() as session:
        held = prepare(session, retry_failed)
        check_legacy_matches(context, session)
        batches = planned_batches(session)
    if held:
        LOGGER.warning("%d batch(es) are leased to other running processes and are left to them", held)
    if on_start:
        on_start(sum(count for _, count in batches))
    totals: Counter[str] = Counter()
    if not batches:
        return totals
    processes = min(settings.run.processes, len(batches))
    pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_init_process,
                               initargs=(settings, os.getpid()))
    try:
        _dispatch(pool, processes, batches, totals, on_batch, sessions)
    except BrokenProcessPool as exc:
        raise MigratorError(
            f"a migration process died ({exc}); run 'migrator start' again to resume") from None
    except BaseException:
        # Ctrl-C or an error: claim nothing more. The pool processes end
        # with this process (PR_SET_PDEATHSIG), abandoning their batches'
        # leases, which the next start takes back.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return totals


def _still_paused(sessions: sessionmaker[Session], was_paused: bool) -> bool:
    with sessions() as session:
        paused = is_paused(session)
    if paused and not was_paused:
        LOGGER.warning("the run is paused: running batches finish, no new batch starts until "
                       "'migrator resume'")
    elif was_paused and not paused:
        LOGGER.info("the run was resumed")
    return paused


def _dispatch(pool: ProcessPoolExecutor, processes: int, batches: list[tuple[int, int]],
              totals: Counter[str], on_batch: Callable[[BatchResult, int], None] | None,
              sessions: sessionmaker[Session]) -> None:
    """Keep two batches per process queued until every batch has run."""
    sizes = dict(batches)
    queue = iter(batches)
    pending: set[Future[BatchResult]] = set()
    paused = False
    while True:
        paused = _still_paused(sessions, paused)
        while not paused and len(pending) < processes * 2:
            nxt = next(queue, None)
            if nxt is None:
                break
            pending.add(pool.submit(_run_batch, nxt[0]))
        if not pending and paused:
            time.sleep(PAUSE_POLL_SECONDS)
            continue
        if not pending:
            return
        finished, pending = wait(pending, timeout=PAUSE_POLL_SECONDS, return_when=FIRST_COMPLETED)
        for future in finished:
            result = future.result()
            totals.update(result.outcomes)
            if on_batch:
                on_batch(result, sizes[result.batch_id])
