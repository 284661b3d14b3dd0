"""Distributed indexing: the folders of each root indexed by the Celery workers of that root.

``migrator plan --distributed`` records a run in the state database and
one row per folder, starting with each root's top folder. It queues each
folder's row id on the root's queue, at most
``broker.max_index_tasks_per_root`` at once per root. The worker that
indexes a folder adds rows for its subfolders, which are queued in turn,
so the planner machine lists no folder itself and need not mount the
roots. The run ends when every folder row is done, and the summary is
the sum of the folder rows: the same numbers as a local walk.

A stopped planner resumes its unfinished run the next time. A folder
whose worker stopped renewing its lease, or whose message was lost, is
queued again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.collisions.patient import load_patient_hasher
from migrator.config import Settings
from migrator.errors import ConfigError, MigratorError
from migrator.index import INDEX_FOLDER_TASK
from migrator.index.store import RootIndexSummary
from migrator.pipeline.lease import owner_is_gone
from migrator.state.models import IndexFolder, IndexFolderStatus, IndexRun
from migrator.task_events import sender_app
from scheduler.plan.index import ensure_roots

LOGGER = logging.getLogger(__name__)

#: A folder queued this long without a worker claiming it is queued again,
#: because its message was lost (a broker restarted without persistence).
REQUEUE_AFTER = timedelta(minutes=30)
#: A root whose folders wait this long without one finishing is logged as stalled.
STALL_WARNING_SECONDS = 60.0

PENDING = IndexFolderStatus.PENDING.value
QUEUED = IndexFolderStatus.QUEUED.value
RUNNING = IndexFolderStatus.RUNNING.value
DONE = IndexFolderStatus.DONE.value

#: Queues one folder: (folder row id, root name, folder path, queue name).
SendFolder = Callable[[int, str, str, str], None]


class IndexingTimedOut(MigratorError):
    """Folders were still waiting for a worker when the planner's timeout ran out."""


def folder_sender(settings: Settings) -> SendFolder:
    """Return a function that queues a folder's index task on its root's queue."""
    app = sender_app(settings, "pacs_migrator_plan")

    def send(folder_id: int, root: str, folder: str, queue: str) -> None:
        # The shadow name shows the queue (and so the root) in Flower and the logs.
        app.send_task(INDEX_FOLDER_TASK, args=[folder_id, root, folder], queue=queue,
                      shadow=f"{INDEX_FOLDER_TASK}[{queue}]")

    return send


def _open_run(session: Session, root_ids: dict[str, int]) -> int:
    """Return the unfinished run to resume, or start a new one, with a row for each root's top folder."""
    run_id = session.scalar(select(IndexRun.id).where(IndexRun.finished_at.is_(None))
                            .order_by(IndexRun.id.desc()).limit(1))
    if run_id is not None:
        LOGGER.info("resuming distributed indexing run %d", run_id)
    else:
        # Only the last finished run's folders are kept, for review.
        session.execute(delete(IndexFolder).where(IndexFolder.run_id.in_(
            select(IndexRun.id).where(IndexRun.finished_at.is_not(None)))))
        run = IndexRun(started_at=audit.now(), host=audit.HOST)
        session.add(run)
        session.flush()
        run_id = run.id
        LOGGER.info("started distributed indexing run %d", run_id)
    seeded = set(session.scalars(select(IndexFolder.root_id).where(
        IndexFolder.run_id == run_id, IndexFolder.folder == "").distinct()))
    for root_id in sorted(set(root_ids.values()) - seeded):
        session.execute(insert(IndexFolder).values(
            run_id=run_id, root_id=root_id, folder="", status=PENDING, attempts=0, reported=False,
            files=0, new=0, changed=0, unreadable=0, changed_after_outcome=0, gone=0))
    session.commit()
    return run_id


def _take_back(session: Session, run_id: int) -> None:
    """Return to the plan the folders whose worker stopped, and those whose message was lost."""
    now = audit.now()
    for folder_id, owner, expires in session.execute(
            select(IndexFolder.id, IndexFolder.lease_owner, IndexFolder.lease_expires)
            .where(IndexFolder.run_id == run_id, IndexFolder.status == RUNNING)):
        if (expires is not None and expires < now) or owner_is_gone(owner):
            LOGGER.warning("index folder %d: its worker %s stopped; queueing it again", folder_id, owner)
            session.execute(update(IndexFolder)
                            .where(IndexFolder.id == folder_id, IndexFolder.lease_owner == owner)
                            .values(status=PENDING, lease_owner=None, lease_expires=None))
    lost = session.execute(update(IndexFolder)
                           .where(IndexFolder.run_id == run_id, IndexFolder.status == QUEUED,
                                  IndexFolder.queued_at < now - REQUEUE_AFTER)
                           .values(status=PENDING))
    if lost.rowcount:  # type: ignore[attr-defined]
        LOGGER.warning("%d index folders were queued for %s without a worker taking them; "
                       "queueing them again", lost.rowcount, REQUEUE_AFTER)  # type: ignore[attr-defined]
    session.commit()


def _feed(session: Session, settings: Settings, run_id: int, names: dict[int, str], send: SendFolder) -> int:
    """Queue pending folders up to each root's limit; return how many were sent."""
    assert settings.broker is not None
    limit = settings.broker.max_index_tasks_per_root
    sent = 0
    for root_id, name in names.items():
        active = session.scalar(select(func.count(IndexFolder.id)).where(
            IndexFolder.run_id == run_id, IndexFolder.root_id == root_id,
            IndexFolder.status.in_([QUEUED, RUNNING]))) or 0
        if active >= limit:
            continue
        rows = session.execute(select(IndexFolder.id, IndexFolder.folder).where(
            IndexFolder.run_id == run_id, IndexFolder.root_id == root_id, IndexFolder.status == PENDING)
            .order_by(IndexFolder.id).limit(limit - active)).all()
        for folder_id, folder in rows:
            # Mark first, then send: a crash in between leaves a queued folder
            # that is queued again after REQUEUE_AFTER, never a lost one.
            result = session.execute(update(IndexFolder)
                                     .where(IndexFolder.id == folder_id, IndexFolder.status == PENDING)
                                     .values(status=QUEUED, queued_at=audit.now()))
            session.commit()
            if result.rowcount == 1:  # type: ignore[attr-defined]
                send(folder_id, name, folder, settings.broker.queue(name))
                sent += 1
    return sent


def _newly_done(session: Session, run_id: int) -> tuple[Counter[int], Counter[int]]:
    """Mark finished folders as counted and return their (files parsed, folders) per root id."""
    rows = session.execute(update(IndexFolder)
                           .where(IndexFolder.run_id == run_id, IndexFolder.status == DONE,
                                  IndexFolder.reported.is_(False))
                           .values(reported=True)
                           .returning(IndexFolder.root_id, IndexFolder.new, IndexFolder.changed)).all()
    session.commit()
    parsed: Counter[int] = Counter()
    folders: Counter[int] = Counter()
    for root_id, new, changed in rows:
        parsed[root_id] += new + changed
        folders[root_id] += 1
    return parsed, folders


def _waiting(session: Session, run_id: int) -> Counter[int]:
    """Return the folders not yet done per root id."""
    rows = session.execute(select(IndexFolder.root_id, func.count(IndexFolder.id))
                           .where(IndexFolder.run_id == run_id, IndexFolder.status != DONE)
                           .group_by(IndexFolder.root_id))
    return Counter({root_id: count for root_id, count in rows})


def _summaries(session: Session, run_id: int, names: dict[int, str]) -> dict[str, RootIndexSummary]:
    """Add up the folder rows of the run, root by root."""
    summaries = {name: RootIndexSummary(name) for name in names.values()}
    for root_id, files, new, changed, unreadable, after_outcome, gone in session.execute(
            select(IndexFolder.root_id, func.sum(IndexFolder.files), func.sum(IndexFolder.new),
                   func.sum(IndexFolder.changed), func.sum(IndexFolder.unreadable),
                   func.sum(IndexFolder.changed_after_outcome), func.sum(IndexFolder.gone))
            .where(IndexFolder.run_id == run_id).group_by(IndexFolder.root_id)):
        if root_id not in names:
            continue
        summary = summaries[names[root_id]]
        summary.files, summary.new, summary.changed = int(files), int(new), int(changed)
        summary.unreadable, summary.changed_after_outcome, summary.gone = (
            int(unreadable), int(after_outcome), int(gone))
    noted = session.execute(
        select(IndexFolder.root_id, IndexFolder.folder, IndexFolder.error, IndexFolder.skipped_links)
        .where(IndexFolder.run_id == run_id,
               (IndexFolder.error.is_not(None)) | (IndexFolder.skipped_links.is_not(None)))).all()
    # Depth first in name order, as the local walk reports them.
    for root_id, _, error, links in sorted(noted, key=lambda row: (row[0], row[1].split("/"))):
        if root_id not in names:
            continue
        summary = summaries[names[root_id]]
        if error:
            summary.folder_errors.append(error)
        summary.skipped_links.extend(links or [])
    return summaries


def index_roots_distributed(settings: Settings, sessions: sessionmaker[Session],
                            on_progress: Callable[[str, int], None] | None = None,
                            on_folders: Callable[[str, int, int], None] | None = None,
                            send: SendFolder | None = None, poll_seconds: float = 0.5,
                            timeout: float | None = None) -> dict[str, RootIndexSummary]:
    """Have the workers index every root, wait until they finished, and return the summaries.

    Parameters
    ----------
    on_progress
        Called with (root name, files parsed) as folders finish.
    on_folders
        Called with (root name, folders done, folders waiting) after each poll.
    send
        Queues one folder; the default sends a Celery task to the root's queue.
    timeout
        Seconds to wait for the workers. The run stays open, and the next
        call resumes it.

    Raises
    ------
    IndexingTimedOut
        Folders were still waiting when ``timeout`` ran out.
    """
    if settings.broker is None:
        raise ConfigError("'migrator plan --distributed' needs a [broker] section and workers that "
                          "serve the roots' queues; without them run 'migrator plan'")
    send = send or folder_sender(settings)
    with sessions() as session:
        root_ids = ensure_roots(session, settings)
        # Create the patient hash key before any worker needs it, and check this machine's key.
        load_patient_hasher(session, settings)
        run_id = _open_run(session, root_ids)
    names = {root_ids[root.name]: root.name for root in settings.roots}
    done: Counter[int] = Counter()
    last_change = {root_id: time.monotonic() for root_id in names}
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with sessions() as session:
            _take_back(session, run_id)
            _feed(session, settings, run_id, names, send)
            parsed, folders = _newly_done(session, run_id)
            waiting = _waiting(session, run_id)
        now = time.monotonic()
        for root_id, name in names.items():
            done[root_id] += folders[root_id]
            if folders[root_id]:
                last_change[root_id] = now
            if on_progress and parsed[root_id]:
                on_progress(name, parsed[root_id])
            if on_folders:
                on_folders(name, done[root_id], waiting[root_id])
            if waiting[root_id] and now - last_change[root_id] > STALL_WARNING_SECONDS:
                LOGGER.warning("no folder of root %s was indexed in the last %.0f s and %d are waiting; "
                               "check that a worker serves queue %s", name, STALL_WARNING_SECONDS,
                               waiting[root_id], settings.broker.queue(name))
                last_change[root_id] = now
        if not any(waiting[root_id] for root_id in names):
            break
        if deadline is not None and now > deadline:
            stalled = sorted(names[root_id] for root_id in names if waiting[root_id])
            raise IndexingTimedOut(f"indexing run {run_id} timed out with folders of {', '.join(stalled)} "
                                   "waiting; check that workers serve those roots' queues and run "
                                   "'migrator plan --distributed' again to resume")
        time.sleep(poll_seconds)
    with sessions() as session:
        session.execute(update(IndexRun).where(IndexRun.id == run_id).values(finished_at=audit.now()))
        session.commit()
        return _summaries(session, run_id, names)
