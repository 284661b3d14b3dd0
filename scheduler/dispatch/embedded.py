"""The embedded mode: planned batches on a local process pool, no broker.

Each pool process opens its own databases once and runs the same
``migrate_batch`` that the Celery workers run. Batches are claimed through
leases in the state database, so two overlapping runs share the work
instead of doing it twice.
"""

from __future__ import annotations

import ctypes
import logging
import logging.handlers
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from multiprocessing import get_context
from multiprocessing.queues import Queue

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.config import Settings
from migrator.context import RunContext
from migrator.controls import is_paused
from migrator.errors import MigratorError, StateError, StorageRootError
from migrator.pipeline import BatchResult, migrate_batch
from migrator.pipeline.lease import owner_is_gone
from migrator.state.models import (
    FINISHED,
    REPLANNED,
    Batch,
    BatchStatus,
    Instance,
    Outcome,
)
from scheduler.dispatch.preflight import check_legacy_matches
from scheduler.dispatch.storage_roots import RECHECK_SECONDS, check_roots

LOGGER = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: How often a paused run checks whether it was resumed.
PAUSE_POLL_SECONDS = 2.0
#: The end of the message when a root is missing before the run starts.
ROOTS_BEFORE_RUN = "Nothing was sent; run 'migrator start' again once every root can be read"
#: The end of the message when a root goes missing while the run goes on.
ROOTS_DURING_RUN = ("The run stopped starting batches when it found the root gone. Files of the "
                    "root that vanished during the run failed with 'file not found'; once the root "
                    "can be read, 'migrator start --retry-failed' sends them and the instances "
                    "still pending")

_CONTEXT: RunContext | None = None


def _die_with_parent() -> None:
    # A pool process left running after `migrator start` was killed would
    # keep sending while a new run starts; Linux can kill it with its parent.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        LOGGER.debug("prctl(PR_SET_PDEATHSIG) is not available on this system")


def _init_process(settings: Settings, parent: int, dry_run: bool = False,
                  logs: LogForwarding | None = None) -> None:
    global _CONTEXT
    _die_with_parent()
    # Ctrl-C ends a pool process at once instead of raising KeyboardInterrupt,
    # which the pool would catch before taking the next batch.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect
    if logs is not None:
        logs.send_from_here()
    _CONTEXT = RunContext.open(settings, dry_run)


class _Relay(logging.Handler):
    """Hands each record to the logger of its name in this process, so this process's handlers show it."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


class LogForwarding:
    """Sends the log records of the pool processes to this process's handlers.

    A spawned pool process starts without handlers, so without this its
    warnings (a failed association, a file that vanished, a state database
    that rejects writes) would be lost. At the INFO level or above only
    warnings and errors are sent, so that the per-batch INFO lines of the
    pool processes do not crowd the progress bar. With DEBUG (``migrator
    -v``) every record is sent.
    """

    def __init__(self) -> None:
        root = logging.getLogger()
        level = root.getEffectiveLevel()
        self.level = level if level <= logging.DEBUG else max(level, logging.WARNING)
        #: Loggers with a level of their own in this process, such as pynetdicom's.
        self.levels = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
                       if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}
        self.queue: Queue[logging.LogRecord] = get_context("spawn").Queue()
        self._listener = logging.handlers.QueueListener(self.queue, _Relay())

    def __enter__(self) -> LogForwarding:
        self._listener.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.stop()
        self.queue.close()

    def __getstate__(self) -> dict[str, object]:
        # The listener thread stays in this process; a pool process receives the rest.
        return {"level": self.level, "levels": self.levels, "queue": self.queue}

    def send_from_here(self) -> None:
        """Replace the handlers of this pool process with one that puts records on the queue."""
        root = logging.getLogger()
        root.handlers = [logging.handlers.QueueHandler(self.queue)]
        root.setLevel(self.level)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


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
        session.execute(update(Batch).where(Batch.status.in_(FINISHED), Batch.id.in_(failed_batches))
                        .values(REPLANNED))
        planned = select(Batch.id).where(Batch.status == BatchStatus.PLANNED.value)
        session.execute(update(Instance).where(Instance.outcome == Outcome.FAILED.value,
                                               Instance.batch_id.in_(planned))
                        .values(outcome=None))
    session.commit()
    return held


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def planned_batches(session: Session, exclude: Collection[int] = ()) -> list[tuple[int, int]]:
    """Return (batch id, instances without outcome) in stripe order, the roots interleaved.

    Batches waiting for an automatic retry are left out until it is due.
    """
    pending = (select(func.count(Instance.id)).where(Instance.batch_id == Batch.id,
                                                     Instance.outcome.is_(None))
               .correlate(Batch).scalar_subquery())
    rows = session.execute(select(Batch.id, pending)
                           .where(Batch.status == BatchStatus.PLANNED.value,
                                  or_(Batch.retry_at.is_(None), Batch.retry_at <= audit.now()))
                           .order_by(Batch.seq, Batch.root_id)).all()
    return [(batch_id, count) for batch_id, count in rows if batch_id not in exclude]


def seconds_to_next_retry(session: Session) -> float | None:
    """Return how long until the next batch waiting for a retry is due; None if none waits."""
    moment = session.scalar(select(func.min(Batch.retry_at))
                            .where(Batch.status == BatchStatus.PLANNED.value, Batch.retry_at.is_not(None)))
    if moment is None:
        return None
    return max(0.0, (_aware(moment) - audit.now()).total_seconds())


def run_embedded(settings: Settings, sessions: sessionmaker[Session], retry_failed: bool = False,
                 on_batch: Callable[[BatchResult, int], None] | None = None,
                 on_start: Callable[[int], None] | None = None, dry_run: bool = False) -> Counter[str]:
    """Migrate every planned batch; return the outcome counts of this run.

    With ``dry_run`` every planned batch is prepared once and sent nowhere
    (see :mod:`migrator.pipeline.dry_run`); the counts are then keyed by
    where each instance would go.

    Parameters
    ----------
    on_batch
        Called after each batch with its result and how many of its instances got
        an outcome, which leaves out those waiting for an automatic retry.
    on_start
        Called once with the number of instances this run will migrate.

    Raises
    ------
    MigratorError
        The configuration or a database cannot be used, or a pool process died.
    """
    # Opening the context here fails once with a clear message, not in every process.
    context = RunContext.open(settings, dry_run)
    with sessions() as session:
        held = prepare(session, retry_failed)
        check_roots(settings, session, ROOTS_BEFORE_RUN)
        check_legacy_matches(context, session)
        batches = planned_batches(session)
        waiting = seconds_to_next_retry(session) is not None
    if held:
        LOGGER.warning("%d batch(es) are leased to other running processes and are left to them", held)
    if on_start:
        on_start(sum(count for _, count in batches))
    totals: Counter[str] = Counter()
    if not batches and not waiting:
        return totals
    processes = max(1, min(settings.run.processes, len(batches)))
    with LogForwarding() as logs:
        pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_init_process,
                                   initargs=(settings, os.getpid(), dry_run, logs))
        try:
            _dispatch(pool, processes, batches, totals, on_batch, sessions, refill=not dry_run,
                      check=lambda session: check_roots(settings, session, ROOTS_DURING_RUN))
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
              sessions: sessionmaker[Session], refill: bool = True,
              check: Callable[[Session], None] | None = None) -> None:
    """Keep two batches per process queued until every batch has run, retries included.

    While the state database cannot be reached, nothing new starts, and the
    run goes on when it responds again. Without ``refill`` only ``batches``
    run, once: a dry run returns each batch to the plan, where it must not
    be found again. ``check`` runs every ``RECHECK_SECONDS``, and after
    each batch with failed instances. When it raises StorageRootError, no
    batch starts any more, and the error is raised again once the running
    batches have finished.
    """
    dispatcher = _Dispatcher(pool, processes * 2, batches, totals, on_batch, sessions, refill, check)
    unavailable = False
    while True:
        try:
            if dispatcher.step():
                return
            if unavailable:
                LOGGER.info("the state database responds again; the run goes on")
            unavailable = False
        except OperationalError as exc:
            if not unavailable:
                LOGGER.error("the state database is unavailable (%s); waiting for it", exc.orig)
            unavailable = True
            time.sleep(PAUSE_POLL_SECONDS)


class _Dispatcher:
    def __init__(self, pool: ProcessPoolExecutor, slots: int, batches: list[tuple[int, int]],
                 totals: Counter[str], on_batch: Callable[[BatchResult, int], None] | None,
                 sessions: sessionmaker[Session], refill: bool = True,
                 check: Callable[[Session], None] | None = None) -> None:
        self.pool = pool
        self.refill = refill
        self.slots = slots
        self.sizes = dict(batches)
        self.queue = deque(batches)
        self.running: dict[Future[BatchResult], int] = {}
        self.paused = False
        self.totals = totals
        self.on_batch = on_batch
        self.sessions = sessions
        self.check = check
        self.next_check = time.monotonic() + RECHECK_SECONDS
        #: Why no batch may start any more; raised once the running ones have finished.
        self.stopped: StorageRootError | None = None

    def step(self) -> bool:
        """Start batches while slots are free and collect finished ones; True when all are done."""
        self.paused = _still_paused(self.sessions, self.paused)
        self._check_roots()
        hold = self.paused or self.stopped is not None
        if not hold and not self.queue and self.refill:
            with self.sessions() as session:
                self.queue.extend(planned_batches(session, exclude=set(self.running.values())))
            self.sizes.update(self.queue)
        while not hold and self.queue and len(self.running) < self.slots:
            batch_id, _ = self.queue.popleft()
            self.running[self.pool.submit(_run_batch, batch_id)] = batch_id
        if not self.running:
            if self.stopped is not None:
                raise self.stopped
            if not self.refill and not self.queue:
                return True
            with self.sessions() as session:
                retry_in = seconds_to_next_retry(session)
            if not self.paused and retry_in is None:
                return True
            time.sleep(min(retry_in if retry_in is not None else PAUSE_POLL_SECONDS, PAUSE_POLL_SECONDS))
            return False
        finished, _ = wait(self.running, timeout=PAUSE_POLL_SECONDS, return_when=FIRST_COMPLETED)
        for future in finished:
            self._collect(future)
        return False

    def _check_roots(self) -> None:
        if self.check is None or self.stopped is not None or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + RECHECK_SECONDS
        try:
            with self.sessions() as session:
                self.check(session)
        except StorageRootError as exc:
            self.stopped = exc
            self.queue.clear()
            # Batches submitted to the pool but not started yet stay planned.
            for future in [future for future in self.running if future.cancel()]:
                del self.running[future]
            LOGGER.error("a storage root cannot be read: no batch starts any more, and the run "
                         "stops once its %d running batch(es) have finished", len(self.running))

    def _collect(self, future: Future[BatchResult]) -> None:
        batch_id = self.running.pop(future)
        try:
            result = future.result()
        except StateError as exc:
            # The batch was not claimed and stays planned; a later step starts it again.
            LOGGER.warning("%s; batch %d is tried again later", exc, batch_id)
            time.sleep(PAUSE_POLL_SECONDS)
            if not self.refill:
                self.queue.append((batch_id, self.sizes.get(batch_id, 0)))
            return
        self.totals.update(result.outcomes)
        if result.outcomes.get(Outcome.FAILED.value):
            # A root that went away fails every file of it: check the roots before the next batch.
            self.next_check = 0.0
        if result.interrupted:
            return
        size = self.sizes.get(result.batch_id, 0)
        self.sizes[result.batch_id] = result.retrying
        if self.on_batch:
            self.on_batch(result, size - result.retrying)
