"""Comparing a listed folder with its index rows, and writing the parsed files.

A folder is compared with its rows in the index, so a second run parses
only new or changed files. Both the local walk and the workers of a
distributed plan go through these functions, so their rows and counts
are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from migrator import audit
from migrator.index.folder import FileStat, ParsedFile, storable
from migrator.state.models import Batch, BatchStatus, Instance, Outcome

LOGGER = logging.getLogger(__name__)

#: Files parsed and written together: one task of the local planning pool,
#: or one step of a worker indexing a folder.
FILES_PER_TASK = 200

#: rel_path -> (instance id, size, mtime_ns, outcome) of a folder's indexed files.
Known = dict[str, tuple[int, int, int, str | None]]


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
    #: CPU seconds the parsing processes spent on this root's files (local plan only).
    parse_cpu_seconds: float = 0.0
    skipped_links: list[str] = field(default_factory=list)
    folder_errors: list[str] = field(default_factory=list)


def _rel_path(folder: str, name: str) -> str:
    return storable(f"{folder}/{name}" if folder else name)


def compare_folder(session: Session, root_id: int, folder: str, files: list[FileStat],
                   summary: RootIndexSummary) -> tuple[list[FileStat], Known]:
    """Return the files of ``folder`` that are new or changed since the last run, and its rows.

    Adds the indexed files that are no longer listed to ``summary.gone``.
    """
    known = {
        rel: (id_, size, mtime, outcome)
        for id_, rel, size, mtime, outcome in session.execute(
            select(Instance.id, Instance.rel_path, Instance.size, Instance.mtime_ns, Instance.outcome)
            .where(Instance.root_id == root_id, Instance.folder == storable(folder)))
    }
    listed = {_rel_path(folder, stat.name) for stat in files}
    summary.gone += sum(1 for rel in known if rel not in listed)
    todo = []
    for stat in files:
        row = known.get(_rel_path(folder, stat.name))
        if row is None or (row[1], row[2]) != (stat.size, stat.mtime_ns):
            todo.append(stat)
    return todo, known


def split_folder(folder: str, todo: list[FileStat], known: Known) -> Iterator[tuple[list[FileStat], Known]]:
    """Yield ``todo`` in parts of :data:`FILES_PER_TASK`, each with the rows of its files."""
    for start in range(0, len(todo), FILES_PER_TASK):
        part = todo[start:start + FILES_PER_TASK]
        rels = [_rel_path(folder, stat.name) for stat in part]
        yield part, {rel: known[rel] for rel in rels if rel in known}


def store_parsed(session: Session, root_id: int, parsed: list[ParsedFile], known: Known,
                 summary: RootIndexSummary, commit: bool = True) -> None:
    """Insert new files, update changed ones and record unreadable ones as such.

    A file that changed after it had an outcome is counted and logged but
    not indexed again, so it is not migrated a second time. With ``commit``
    False the caller commits, so the rows can share its transaction.
    """
    now = audit.now()
    new_rows, unreadable_ids = [], []
    for item in parsed:
        values = dict(root_id=root_id, rel_path=item.rel_path, folder=item.folder, size=item.size,
                      mtime_ns=item.mtime_ns, parse_error=item.parse_error, indexed_at=now,
                      transfer_syntax=None, sop_class_uid=None, sop_instance_uid=None,
                      study_uid=None, series_uid=None, modality=None, has_pixel_data=None,
                      patient_id_hash=None, patient_name_hash=None, content_sha256=None)
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
        # The row read for the comparison may be stale: a running batch can have
        # recorded an outcome since, or be about to. Only a row that is still
        # without an outcome, outside a running batch, is indexed again.
        running = select(Batch.id).where(Batch.status == BatchStatus.RUNNING.value)
        updated = session.execute(
            update(Instance)
            .where(Instance.id == old[0],
                   or_(Instance.outcome.is_(None), Instance.outcome == Outcome.UNREADABLE.value),
                   or_(Instance.batch_id.is_(None), Instance.batch_id.not_in(running)))
            .values(**values, batch_id=None, outcome=None))
        if updated.rowcount != 1:  # type: ignore[attr-defined]
            summary.changed_after_outcome += 1
            LOGGER.warning("%s/%s changed while its batch was running; run 'migrator plan' again "
                           "once the run has finished", summary.root, item.rel_path)
            continue
        if item.parse_error:
            unreadable_ids.append((old[0], item))
    new_unreadable = [item for item in parsed if item.parse_error and item.rel_path not in known]
    if new_rows and not new_unreadable:
        # Without RETURNING the rows go in as one executemany, the common case.
        session.execute(insert(Instance), new_rows)
    elif new_rows:
        inserted = session.execute(insert(Instance).returning(Instance.id, Instance.rel_path), new_rows)
        by_path = {rel: id_ for id_, rel in inserted}
        unreadable_ids += [(by_path[item.rel_path], item) for item in new_unreadable]
    for instance_id, item in unreadable_ids:
        summary.unreadable += 1
        LOGGER.warning("unreadable file %s/%s: %s", summary.root, item.rel_path, item.parse_error)
        audit.write(session, audit.Record(instance_id=instance_id, outcome=Outcome.UNREADABLE,
                                          reason=f"unreadable: {item.parse_error}", archived=False),
                    commit=False)
    if commit:
        session.commit()
