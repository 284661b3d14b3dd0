"""The distributed mode: planned batches fed to Celery workers, a queue per storage root.

The dispatcher keeps at most ``broker.max_in_flight_per_root`` batches
queued or running per root, so the broker never contains the whole plan, and
feeds each root's batches in stripe order. Progress is read from the state
database, not from task results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.config import Settings
from migrator.context import RunContext
from migrator.controls import is_paused
from migrator.pipeline import MIGRATE_BATCH_TASK
from migrator.state.models import Batch, BatchStatus, Instance, StorageRoot
from migrator.task_events import sender_app
from scheduler.dispatch.embedded import prepare
from scheduler.dispatch.preflight import check_legacy_matches

LOGGER = logging.getLogger(__name__)

#: A batch queued this long without a worker claiming it is sent again,
#: because its message was lost (a broker restarted without persistence).
REQUEUE_AFTER = timedelta(hours=1)
ACTIVE = [BatchStatus.QUEUED.value, BatchStatus.RUNNING.value]

Send = Callable[[int, str], None]


def celery_sender(settings: Settings) -> Send:
    """Return a function that queues a batch id on its root's queue."""
    assert settings.broker is not None
    app = sender_app(settings, "pacs_migrator_dispatch")

    def send(batch_id: int, queue: str) -> None:
        # The shadow name shows the queue (and so the root) in Flower and the logs.
        app.send_task(MIGRATE_BATCH_TASK, args=[batch_id], queue=queue,
                      shadow=f"{MIGRATE_BATCH_TASK}[{queue}]")

    return send


def _pending(session: Session) -> int:
    return session.scalar(select(func.count(Instance.id)).join(Batch, Batch.id == Instance.batch_id)
                          .where(Instance.outcome.is_(None))) or 0


def _requeue_lost(session: Session) -> None:
    stale = audit.now() - REQUEUE_AFTER
    session.execute(update(Batch).where(Batch.status == BatchStatus.QUEUED.value,
                                        Batch.started_at < stale)
                    .values(status=BatchStatus.PLANNED.value))
    session.commit()


def feed(session: Session, settings: Settings, send: Send, moment: datetime | None = None) -> int:
    """Queue planned batches up to each root's limit; return how many were sent.

    A batch waiting for an automatic retry is queued once the retry is due.
    Nothing is sent while the run is paused. The limit is the one of the
    time window that contains ``moment`` (default: now, local time).
    """
    assert settings.broker is not None
    if is_paused(session):
        return 0
    limit = settings.broker.in_flight_limit(moment or datetime.now())
    sent = 0
    for root_id, name in session.execute(select(StorageRoot.id, StorageRoot.name).order_by(StorageRoot.id)):
        active = session.scalar(select(func.count(Batch.id))
                                .where(Batch.root_id == root_id, Batch.status.in_(ACTIVE))) or 0
        if active >= limit:
            continue
        due = or_(Batch.retry_at.is_(None), Batch.retry_at <= audit.now())
        ids = session.scalars(select(Batch.id).where(Batch.root_id == root_id,
                                                     Batch.status == BatchStatus.PLANNED.value, due)
                              .order_by(Batch.seq).limit(limit - active)).all()
        for batch_id in ids:
            # Mark first, then send: a crash in between leaves a queued batch
            # that is sent again after REQUEUE_AFTER, never a lost one.
            result = session.execute(update(Batch).where(Batch.id == batch_id,
                                                         Batch.status == BatchStatus.PLANNED.value)
                                     .values(status=BatchStatus.QUEUED.value, started_at=audit.now()))
            session.commit()
            if result.rowcount == 1:  # type: ignore[attr-defined]
                try:
                    send(batch_id, settings.broker.queue(name))
                except Exception:
                    session.execute(update(Batch).where(Batch.id == batch_id)
                                    .values(status=BatchStatus.PLANNED.value))
                    session.commit()
                    raise
                sent += 1
    return sent


def run_distributed(settings: Settings, sessions: sessionmaker[Session], retry_failed: bool = False,
                    send: Send | None = None, poll_seconds: float = 1.0,
                    on_progress: Callable[[int], None] | None = None,
                    timeout: float | None = None) -> int:
    """Feed every planned batch to the workers and wait until none is pending.

    Returns the number of instances still pending when ``timeout`` (seconds)
    ran out (-1 if the state database could not be read), 0 when the run
    finished. An unavailable state database or broker is waited for.
    """
    context = RunContext.open(settings)
    send = send or celery_sender(settings)
    with sessions() as session:
        prepare(session, retry_failed)
        check_legacy_matches(context, session)
    deadline = None if timeout is None else time.monotonic() + timeout
    broker = BrokerWatch(settings)
    pending: int | None = None
    while True:
        try:
            with sessions() as session:
                if broker.restarted():
                    _requeue_queued(session)
                prepare(session, retry_failed=False)  # takes back batches of workers that died
                _requeue_lost(session)
                feed(session, settings, send)
                pending = _pending(session)
            broker.healthy()
        except (OperationalError, KombuError, RedisError) as exc:
            broker.failed(exc)
        if pending is not None and on_progress:
            on_progress(pending)
        if pending == 0:
            return 0
        if deadline is not None and time.monotonic() > deadline:
            return pending if pending is not None else -1
        time.sleep(poll_seconds)


class BrokerWatch:
    """Notices a Redis restart and an unavailable state database or broker, and logs each once.

    Redis without persistence loses its queues on a restart, so the
    batches that were queued then are sent again. A batch whose message
    survived is then delivered twice, and the batch lease makes the second
    delivery do nothing.
    """

    def __init__(self, settings: Settings) -> None:
        assert settings.broker is not None
        self._redis = redis.Redis.from_url(settings.broker.broker_url(), socket_timeout=10)
        self._run_id: str | None = None
        self._failing = False

    def restarted(self) -> bool:
        run_id = str(self._redis.info("server")["run_id"])
        changed = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if changed:
            LOGGER.warning("the broker (Redis) was restarted; batches queued before are queued again")
        return changed

    def healthy(self) -> None:
        if self._failing:
            LOGGER.info("the state database and the broker respond again; dispatch goes on")
        self._failing = False

    def failed(self, exc: Exception) -> None:
        if not self._failing:
            what = "state database" if isinstance(exc, OperationalError) else "broker (Redis)"
            LOGGER.error("the %s is unavailable (%s); dispatch waits for it", what, exc)
        self._failing = True


def _requeue_queued(session: Session) -> None:
    session.execute(update(Batch).where(Batch.status == BatchStatus.QUEUED.value)
                    .values(status=BatchStatus.PLANNED.value))
    session.commit()
