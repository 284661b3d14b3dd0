"""Indexing one folder of a distributed plan, in a Celery worker.

The planner (``scheduler.plan.distributed``) records each folder of a run
as an :class:`~migrator.state.models.IndexFolder` row and queues the row's
id on its root's queue. A worker claims the row with a lease, lists the
folder, parses its new or changed files, and then writes their instances,
the folder's counters and one row per subfolder (which the planner queues
next) in a single transaction. A worker that dies in the middle of a
folder leaves none of it committed, so the next attempt indexes the folder
from the start and counts it the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.collisions.patient import load_patient_hasher
from migrator.config import Settings
from migrator.errors import ConfigError, MigratorError
from migrator.index.folder import folder_error, list_folder, parse_folder, storable
from migrator.index.store import (
    RootIndexSummary,
    compare_folder,
    split_folder,
    store_parsed,
)
from migrator.pipeline.lease import owner_is_gone
from migrator.state.models import IndexFolder, IndexFolderStatus, StorageRoot

LOGGER = logging.getLogger(__name__)

#: How long a folder lease lasts without renewal. A worker renews it after
#: every :data:`~migrator.index.store.FILES_PER_TASK` files it parses.
LEASE = timedelta(minutes=10)
#: How often a worker indexing a folder renews its lease.
RENEW_EVERY = timedelta(seconds=30)
#: Attempts at one folder before it is recorded as a folder error.
MAX_ATTEMPTS = 3

RUNNING = IndexFolderStatus.RUNNING.value


class FolderLeaseLost(MigratorError):
    """Another worker took the folder over after this worker's lease expired."""


@dataclass(frozen=True)
class ClaimedFolder:
    folder_id: int
    run_id: int
    root_id: int
    #: The path to list, relative to the root. It contains surrogates for
    #: bytes that are not valid UTF-8.
    path: str
    attempts: int


def claim_folder(session: Session, folder_id: int, owner: str, worker: str) -> ClaimedFolder | None:
    """Take the folder's lease atomically, or return None if it is indexed or leased to a live worker.

    A folder leased to a process of this host that no longer runs is taken
    over at once, because Celery redelivers the message of a killed worker
    process straight away.
    """
    now = audit.now()
    claimable = or_(IndexFolder.status.in_([IndexFolderStatus.PENDING.value, IndexFolderStatus.QUEUED.value]),
                    and_(IndexFolder.status == RUNNING, IndexFolder.lease_expires < now))
    current = session.scalar(select(IndexFolder.lease_owner).where(
        IndexFolder.id == folder_id, IndexFolder.status == RUNNING))
    if current and owner_is_gone(current):
        LOGGER.warning("index folder %d was leased to %s, which no longer runs; taking it over",
                       folder_id, current)
        claimable = or_(claimable, and_(IndexFolder.status == RUNNING, IndexFolder.lease_owner == current))
    row = session.execute(
        update(IndexFolder).where(IndexFolder.id == folder_id).where(claimable)
        .values(status=RUNNING, lease_owner=owner, lease_expires=now + LEASE,
                attempts=IndexFolder.attempts + 1, worker=worker)
        .returning(IndexFolder.run_id, IndexFolder.root_id, IndexFolder.folder, IndexFolder.raw_folder,
                   IndexFolder.attempts)
    ).one_or_none()
    session.commit()
    if row is None:
        return None
    run_id, root_id, folder, raw_folder, attempts = row
    path = os.fsdecode(raw_folder) if raw_folder is not None else folder
    return ClaimedFolder(folder_id, run_id, root_id, path, attempts)


class _FolderLease:
    def __init__(self, folder_id: int, owner: str) -> None:
        self.folder_id = folder_id
        self.owner = owner
        self.renewed_at = audit.now()

    def renew(self, session: Session) -> None:
        """Extend the lease if it is due, in ``session``'s own transaction.

        Raises
        ------
        FolderLeaseLost
            The lease expired and another worker holds the folder now.
        """
        now = audit.now()
        if now - self.renewed_at < RENEW_EVERY:
            return
        result = session.execute(update(IndexFolder)
                                 .where(IndexFolder.id == self.folder_id, IndexFolder.lease_owner == self.owner)
                                 .values(lease_expires=now + LEASE))
        session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise FolderLeaseLost(f"index folder {self.folder_id} was taken over by another worker")
        self.renewed_at = now


def index_folder(sessions: sessionmaker[Session], settings: Settings, folder_id: int, owner: str,
                 worker: str) -> RootIndexSummary | None:
    """Index the folder of row ``folder_id`` and return what it found, or None if there was nothing to do.

    ``owner`` ("host:pid") identifies this process in the lease, and
    ``worker`` (the Celery node name) is recorded on the row. A failure
    returns the folder to the planner, which queues it again, until the
    folder has had :data:`MAX_ATTEMPTS` attempts. After that the failure
    is recorded as the folder's error.
    """
    with sessions() as session:
        claimed = claim_folder(session, folder_id, owner, worker)
        if claimed is None:
            LOGGER.info("index folder %d is indexed or held by another worker; nothing to do", folder_id)
            return None
        root_name = session.scalar(select(StorageRoot.name).where(StorageRoot.id == claimed.root_id))
    try:
        return _index_claimed(sessions, settings, claimed, str(root_name), owner)
    except FolderLeaseLost as exc:
        LOGGER.warning("%s; its work here was rolled back", exc)
        return None
    except Exception as exc:
        with sessions() as session:
            _release_after_error(session, claimed, str(root_name), owner, exc)
        raise


def _root_path(settings: Settings, root_name: str) -> Path:
    for root in settings.roots:
        if root.name == root_name:
            return settings.resolve(root.path)
    raise ConfigError(f"storage root {root_name!r} is not in this worker's configuration; "
                      "give every machine the same [[roots]]")


def _index_claimed(sessions: sessionmaker[Session], settings: Settings, claimed: ClaimedFolder,
                   root_name: str, owner: str) -> RootIndexSummary:
    root_path = _root_path(settings, root_name)
    summary = RootIndexSummary(root_name)
    lease = _FolderLease(claimed.folder_id, owner)
    subfolders: list[str] = []
    with sessions() as session:
        hasher = load_patient_hasher(session, settings)
    with sessions() as session, sessions() as lease_session:
        try:
            files, subfolders = list_folder(root_path, claimed.path, root_path.resolve(),
                                            summary.skipped_links)
        except OSError as exc:
            summary.folder_errors.append(folder_error(root_path, claimed.path, exc))
        else:
            summary.files = len(files)
            todo, known = compare_folder(session, claimed.root_id, claimed.path, files, summary)
            for part, part_known in split_folder(claimed.path, todo, known):
                parsed = parse_folder(str(root_path), claimed.path, part, hasher)
                store_parsed(session, claimed.root_id, parsed, part_known, summary, commit=False)
                lease.renew(lease_session)
        if subfolders:
            session.execute(insert(IndexFolder), [_subfolder_row(claimed, path) for path in subfolders])
        if not _finish(session, claimed, owner, summary):
            session.rollback()
            raise FolderLeaseLost(f"index folder {claimed.folder_id} was taken over by another worker")
        session.commit()
    return summary


def _subfolder_row(claimed: ClaimedFolder, path: str) -> dict[str, object]:
    stored = storable(path)
    return dict(run_id=claimed.run_id, root_id=claimed.root_id, folder=stored,
                raw_folder=os.fsencode(path) if stored != path else None,
                status=IndexFolderStatus.PENDING.value, attempts=0, reported=False,
                files=0, new=0, changed=0, unreadable=0, changed_after_outcome=0, gone=0)


def _finish(session: Session, claimed: ClaimedFolder, owner: str, summary: RootIndexSummary) -> bool:
    """Mark the folder done with its counters, in the caller's transaction, if the lease is still held."""
    # A text column cannot contain the surrogates of a path that is not valid UTF-8.
    error = storable("; ".join(summary.folder_errors)) or None
    result = session.execute(
        update(IndexFolder)
        .where(IndexFolder.id == claimed.folder_id, IndexFolder.lease_owner == owner,
               IndexFolder.status == RUNNING)
        .values(status=IndexFolderStatus.DONE.value, lease_owner=None, lease_expires=None,
                finished_at=audit.now(), files=summary.files, new=summary.new, changed=summary.changed,
                unreadable=summary.unreadable, changed_after_outcome=summary.changed_after_outcome,
                gone=summary.gone, error=error, skipped_links=summary.skipped_links or None))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def _release_after_error(session: Session, claimed: ClaimedFolder, root_name: str, owner: str,
                         exc: Exception) -> None:
    """Return the folder to the planner, or record the error once its attempts are used up."""
    held = and_(IndexFolder.id == claimed.folder_id, IndexFolder.lease_owner == owner)
    if claimed.attempts < MAX_ATTEMPTS:
        LOGGER.warning("indexing folder %d failed (attempt %d of %d): %s; the planner queues it again",
                       claimed.folder_id, claimed.attempts, MAX_ATTEMPTS, exc)
        values: dict[str, object] = dict(status=IndexFolderStatus.PENDING.value)
    else:
        LOGGER.error("indexing folder %d failed %d times: %s; recorded as a folder error",
                     claimed.folder_id, claimed.attempts, exc)
        values = dict(status=IndexFolderStatus.DONE.value, finished_at=audit.now(),
                      error=storable(f"root {root_name}, folder {claimed.path or '.'}: indexing "
                                     f"failed after {claimed.attempts} attempts: {exc}"))
    session.execute(update(IndexFolder).where(held).values(lease_owner=None, lease_expires=None, **values))
    session.commit()

