"""The embedded mode: planned batches on a local process pool, no broker.

Each pool process opens its own databases once and runs the same
``migrate_batch`` that the Celery workers run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import Settings
from migrator.context import RunContext
from migrator.pipeline import BatchResult, migrate_batch
from migrator.state.models import Batch, BatchStatus, Instance, Outcome

LOGGER = logging.getLogger(__name__)

_CONTEXT: RunContext | None = None


def _init_process(settings: Settings) -> None:
    global _CONTEXT
    _CONTEXT = RunContext.open(settings)


def _run_batch(batch_id: int) -> BatchResult:
    assert _CONTEXT is not None, "pool process was not initialised"
    return migrate_batch(_CONTEXT, batch_id)


def prepare(session: Session, retry_failed: bool) -> None:
    """Return interrupted batches to the plan and, if asked, failed instances too.

    Only one embedded run uses a state database at a time, so a batch still
    marked running was interrupted (Ctrl-C, a kill, a crash).
    """
    session.execute(update(Batch).where(Batch.status == BatchStatus.RUNNING.value)
                    .values(status=BatchStatus.PLANNED.value, lease_owner=None, lease_expires=None))
    if retry_failed:
        failed_batches = select(Instance.batch_id).where(Instance.outcome == Outcome.FAILED.value)
        session.execute(update(Batch).where(Batch.id.in_(failed_batches))
                        .values(status=BatchStatus.PLANNED.value))
        session.execute(update(Instance).where(Instance.outcome == Outcome.FAILED.value,
                                               Instance.batch_id.is_not(None))
                        .values(outcome=None))
    session.commit()


def planned_batches(session: Session) -> list[tuple[int, int]]:
    """Return (batch id, instance count) in stripe order, the roots interleaved."""
    rows = session.execute(select(Batch.id, Batch.instance_count)
                           .where(Batch.status == BatchStatus.PLANNED.value)
                           .order_by(Batch.seq, Batch.root_id)).all()
    return list(rows)


def run_embedded(settings: Settings, sessions: sessionmaker[Session], retry_failed: bool = False,
                 on_batch: Callable[[BatchResult, int], None] | None = None) -> Counter[str]:
    """Migrate every planned batch; return the outcome counts of this run.

    Parameters
    ----------
    on_batch
        Called after each batch with its result and its planned instance count.
    """
    with sessions() as session:
        prepare(session, retry_failed)
        batches = planned_batches(session)
    totals: Counter[str] = Counter()
    if not batches:
        return totals
    processes = min(settings.run.processes, len(batches))
    sizes = dict(batches)
    queue = iter(batches)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_init_process,
                             initargs=(settings,)) as pool:
        pending: set[Future[BatchResult]] = set()
        try:
            while True:
                while len(pending) < processes * 2:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending.add(pool.submit(_run_batch, nxt[0]))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    totals.update(result.outcomes)
                    if on_batch:
                        on_batch(result, sizes[result.batch_id])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return totals
