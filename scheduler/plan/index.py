"""Indexing: one row per file, inserted in bulk, resumable.

The walk goes folder by folder and compares each folder with its rows in
the index, so a second run parses only new or changed files and memory
stays flat however many files a root holds.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.config import Settings
from migrator.state.models import Instance, Outcome, StorageRoot
from scheduler.plan.walk import (
    FileStat,
    ParsedFile,
    iter_folders,
    parse_folder,
    storable,
)

LOGGER = logging.getLogger(__name__)

#: Files per task sent to the planning pool.
FILES_PER_TASK = 200


@dataclass
class RootIndexSummary:
    root: str
    files: int = 0
    new: int = 0
    changed: int = 0
    unreadable: int = 0
    #: Files whose size or time changed after they had an outcome.
    changed_after_outcome: int = 0
    #: Indexed files no longer found in a folder that was walked.
    gone: int = 0
    skipped_links: list[str] = field(default_factory=list)
    folder_errors: list[str] = field(default_factory=list)


def ensure_roots(session: Session, settings: Settings) -> dict[str, int]:
    """Create a row for each configured root; return name -> id."""
    ids = {name: id_ for id_, name in session.execute(select(StorageRoot.id, StorageRoot.name))}
    for root in settings.roots:
        path = str(settings.resolve(root.path))
        if root.name not in ids:
            row = StorageRoot(name=root.name, path=path)
            session.add(row)
            session.flush()
            ids[root.name] = row.id
        else:
            session.execute(update(StorageRoot).where(StorageRoot.id == ids[root.name]).values(path=path))
    session.commit()
    return ids


Task = tuple[int, str, str, list[FileStat], dict[str, tuple[int, int, int, str | None]]]


def _tasks(session: Session, root_id: int, root_path: Path,
           summary: RootIndexSummary) -> Iterator[Task]:
    """Yield the files of each folder that are new or changed since the last run."""
    for folder, files in iter_folders(root_path, summary.folder_errors, summary.skipped_links):
        summary.files += len(files)
        stored_folder = storable(folder)
        known = {
            rel: (id_, size, mtime, outcome)
            for id_, rel, size, mtime, outcome in session.execute(
                select(Instance.id, Instance.rel_path, Instance.size, Instance.mtime_ns, Instance.outcome)
                .where(Instance.root_id == root_id, Instance.folder == stored_folder))
        }
        session.rollback()  # end the read transaction; the writer commits meanwhile
        listed = {storable(f"{folder}/{stat.name}" if folder else stat.name) for stat in files}
        summary.gone += sum(1 for rel in known if rel not in listed)
        todo = []
        for stat in files:
            rel = storable(f"{folder}/{stat.name}" if folder else stat.name)
            row = known.get(rel)
            if row is None or (row[1], row[2]) != (stat.size, stat.mtime_ns):
                todo.append(stat)
        for start in range(0, len(todo), FILES_PER_TASK):
            part = todo[start:start + FILES_PER_TASK]
            rels = [storable(f"{folder}/{stat.name}" if folder else stat.name) for stat in part]
            part_known = {rel: known[rel] for rel in rels if rel in known}
            yield root_id, str(root_path), folder, part, part_known


def _store(session: Session, root_id: int, parsed: list[ParsedFile],
           known: dict[str, tuple[int, int, int, str | None]], summary: RootIndexSummary) -> None:
    now = audit.now()
    new_rows, unreadable_ids = [], []
    for item in parsed:
        values = dict(root_id=root_id, rel_path=item.rel_path, folder=item.folder, size=item.size,
                      mtime_ns=item.mtime_ns, parse_error=item.parse_error, indexed_at=now,
                      transfer_syntax=None, sop_class_uid=None, sop_instance_uid=None,
                      study_uid=None, series_uid=None, modality=None, has_pixel_data=None)
        values.update(item.fields)
        old = known.get(item.rel_path)
        if old is None:
            new_rows.append(values)
            summary.new += 1
            continue
        summary.changed += 1
        if old[3] not in (None, Outcome.UNREADABLE.value):
            summary.changed_after_outcome += 1
            LOGGER.warning("%s/%s changed after it was migrated (outcome %s); not migrated again",
                           summary.root, item.rel_path, old[3])
            continue
        session.execute(update(Instance).where(Instance.id == old[0])
                        .values(**values, batch_id=None, outcome=None))
        if item.parse_error:
            unreadable_ids.append((old[0], item))
    if new_rows:
        inserted = session.execute(insert(Instance).returning(Instance.id, Instance.rel_path), new_rows)
        by_path = {rel: id_ for id_, rel in inserted}
        unreadable_ids += [(by_path[item.rel_path], item) for item in parsed
                           if item.parse_error and item.rel_path not in known]
    for instance_id, item in unreadable_ids:
        summary.unreadable += 1
        LOGGER.warning("unreadable file %s/%s: %s", summary.root, item.rel_path, item.parse_error)
        audit.write(session, audit.Record(instance_id=instance_id, outcome=Outcome.UNREADABLE,
                                          reason=f"unreadable: {item.parse_error}", archived=False),
                    commit=False)
    session.commit()


def index_roots(settings: Settings, sessions: sessionmaker[Session],
                on_progress: Callable[[str, int], None] | None = None) -> dict[str, RootIndexSummary]:
    """Walk every root in parallel and bring the index up to date.

    Parameters
    ----------
    on_progress
        Called with (root name, files parsed) as results come in.
    """
    with sessions() as session:
        root_ids = ensure_roots(session, settings)
    summaries = {root.name: RootIndexSummary(root.name) for root in settings.roots}
    names = {root_ids[root.name]: root.name for root in settings.roots}
    processes = settings.run.processes
    with sessions() as walk_session, sessions() as write_session, ProcessPoolExecutor(
            processes, mp_context=get_context("spawn")) as pool:
        generators = [
            _tasks(walk_session, root_ids[root.name], settings.resolve(root.path), summaries[root.name])
            for root in settings.roots
        ]
        # Interleave the roots so that every root is walked at once.
        tasks = (task for group in itertools.zip_longest(*generators) for task in group
                 if task is not None)
        pending: dict[Future[list[ParsedFile]], Task] = {}
        for task in itertools.chain(tasks, [None]):
            if task is not None:
                pending[pool.submit(parse_folder, task[1], task[2], task[3])] = task
            while pending and (task is None or len(pending) >= processes * 4):
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    root_id, _, _, _, known = pending.pop(future)
                    parsed = future.result()
                    _store(write_session, root_id, parsed, known, summaries[names[root_id]])
                    if on_progress:
                        on_progress(names[root_id], len(parsed))
    return summaries
