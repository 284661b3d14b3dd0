"""Indexing on this machine: every root walked at once, headers parsed by a process pool.

The walk goes folder by folder and compares each folder with its rows in
the index, so a second run parses only new or changed files and memory
stays flat however many files a root holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import forkserver, get_context
from multiprocessing.context import BaseContext
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator.collisions.patient import load_patient_hasher
from migrator.config import Settings
from migrator.index.folder import FileStat, ParsedFile, parse_folder_timed
from migrator.index.store import (
    Known,
    RootIndexSummary,
    compare_folder,
    split_folder,
    store_parsed,
)
from migrator.state.models import StorageRoot
from scheduler.plan.walk import iter_folders

__all__ = ["RootIndexSummary", "ensure_roots", "index_roots"]


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


Task = tuple[int, str, str, list[FileStat], Known]


def _tasks(session: Session, root_id: int, root_path: Path,
           summary: RootIndexSummary) -> Iterator[Task]:
    """Yield the files of each folder that are new or changed since the last run."""
    for folder, files in iter_folders(root_path, summary.folder_errors, summary.skipped_links):
        summary.files += len(files)
        todo, known = compare_folder(session, root_id, folder, files, summary)
        session.rollback()  # end the read transaction; the writer commits meanwhile
        for part, part_known in split_folder(folder, todo, known):
            yield root_id, str(root_path), folder, part, part_known


def _parsing_context() -> BaseContext:
    """Return the start method of the parsing pool.

    A fork server that has imported the parser forks each pool process, so
    no pool process imports anything again. A spawned process would import
    the parser and the command's main module, about half a CPU-second each.
    The fork server contains no connection or thread, so forking from it is
    as safe as spawning.
    """
    context = get_context("forkserver")
    context.set_forkserver_preload(["migrator.index.folder"])
    return context


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
        hasher = load_patient_hasher(session, settings)
    summaries = {root.name: RootIndexSummary(root.name) for root in settings.roots}
    names = {root_ids[root.name]: root.name for root in settings.roots}
    processes = settings.run.processes
    with sessions() as walk_session, sessions() as write_session, ProcessPoolExecutor(
            processes, mp_context=_parsing_context()) as pool:
        generators = [
            _tasks(walk_session, root_ids[root.name], settings.resolve(root.path), summaries[root.name])
            for root in settings.roots
        ]
        # Interleave the roots so that every root is walked at once.
        tasks = (task for group in itertools.zip_longest(*generators) for task in group
                 if task is not None)
        pending: dict[Future[tuple[list[ParsedFile], float]], Task] = {}
        for task in itertools.chain(tasks, [None]):
            if task is not None:
                pending[pool.submit(parse_folder_timed, task[1], task[2], task[3], hasher)] = task
            while pending and (task is None or len(pending) >= processes * 4):
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    root_id, _, _, _, known = pending.pop(future)
                    parsed, cpu_seconds = future.result()
                    summaries[names[root_id]].parse_cpu_seconds += cpu_seconds
                    store_parsed(write_session, root_id, parsed, known, summaries[names[root_id]])
                    if on_progress:
                        on_progress(names[root_id], len(parsed))
    _stop_fork_server()
    return summaries


def _stop_fork_server() -> None:
    """Stop the fork server once the pool is done, and wait for it.

    It would otherwise run until this process exits, unwaited, so that a
    parent's resource accounting (wait4, /usr/bin/time) missed the CPU of
    every parsing process. multiprocessing has no public call for this;
    without ``_stop`` the server ends with this process as before.
    """
    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if callable(stop):
        stop()
