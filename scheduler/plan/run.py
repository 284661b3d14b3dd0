"""``migrator plan``: index every root, check for collisions, then cut batches, then summarize."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from migrator.collisions.detect import CollisionCheck, check_collisions
from migrator.config import Settings
from migrator.state.models import Batch, CollisionMember, Instance, StorageRoot
from scheduler.plan.batches import Limits, Mode, cut_batches
from scheduler.plan.distributed import index_roots_distributed
from scheduler.plan.index import RootIndexSummary, index_roots


@dataclass(frozen=True)
class RootPlanSummary:
    root: str
    files: int
    bytes: int
    studies: int
    batches: int
    unreadable: int
    new: int
    changed: int
    gone: int
    folder_errors: list[str]
    skipped_links: list[str]
    #: Files of this root in a collision that the check found, of any kind.
    in_collisions: int = 0


@dataclass(frozen=True)
class IndexCost:
    """The cost of bringing the index up to date on this machine (a local plan only)."""

    files_listed: int
    files_parsed: int
    seconds: float
    #: This process (walk, comparison, database writes) plus the parsing
    #: processes' work; their start-up is left out.
    cpu_seconds: float

    @property
    def files_per_cpu_second(self) -> float:
        return self.files_listed / self.cpu_seconds if self.cpu_seconds else 0.0


def plan(settings: Settings, sessions: sessionmaker[Session], mode: Mode | None = None,
         on_progress: Callable[[str, int], None] | None = None, distributed: bool = False,
         on_folders: Callable[[str, int, int], None] | None = None,
         on_check: Callable[[CollisionCheck], None] | None = None,
         on_indexed: Callable[[IndexCost], None] | None = None) -> list[RootPlanSummary]:
    """Bring the index up to date, check it for collisions, and batch everything not yet batched.

    With ``distributed`` the Celery workers of each root index it (see
    :mod:`scheduler.plan.distributed`), and ``on_folders`` is called with
    (root name, folders done, folders waiting). The collision check and the
    batches run here either way, and ``on_check`` receives what the check
    found, and ``on_indexed`` the cost of a local indexing. Batches are cut only after the check has finished, so
    ``migrator start`` never migrates a file the check has not seen.

    Raises
    ------
    LegacyDatabaseError
        The collision check needed the legacy database and its query failed;
        nothing new was batched.
    """
    mode = mode or settings.batches.mode
    if distributed:
        walked = index_roots_distributed(settings, sessions, on_progress, on_folders)
    else:
        started, cpu_started = time.perf_counter(), time.process_time()
        walked = index_roots(settings, sessions, on_progress)
        if on_indexed:
            summaries = walked.values()
            on_indexed(IndexCost(
                files_listed=sum(s.files for s in summaries),
                files_parsed=sum(s.new + s.changed for s in summaries),
                seconds=time.perf_counter() - started,
                cpu_seconds=time.process_time() - cpu_started + sum(s.parse_cpu_seconds for s in summaries)))
    check = check_collisions(settings, sessions)
    if on_check:
        on_check(check)
    limits = Limits(settings.batches.max_instances, int(settings.batches.max_megabytes * 1024 * 1024))
    with sessions() as session:
        root_ids = dict(session.execute(select(StorageRoot.name, StorageRoot.id)).all())
    for root in settings.roots:
        cut_batches(sessions, root_ids[root.name], mode, limits)
    with sessions() as session:
        return [_summarize(session, root.name, root_ids[root.name], walked[root.name])
                for root in settings.roots]


def _summarize(session: Session, name: str, root_id: int, walked: RootIndexSummary) -> RootPlanSummary:
    files, size, studies = session.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0),
               func.count(distinct(Instance.study_uid)))
        .where(Instance.root_id == root_id)).one()
    unreadable = session.scalar(select(func.count(Instance.id)).where(
        Instance.root_id == root_id, Instance.parse_error.is_not(None))) or 0
    batches = session.scalar(select(func.count(Batch.id)).where(Batch.root_id == root_id)) or 0
    in_collisions = session.scalar(
        select(func.count(distinct(CollisionMember.instance_id)))
        .join(Instance, Instance.id == CollisionMember.instance_id).where(Instance.root_id == root_id)) or 0
    return RootPlanSummary(name, files, int(size), studies, batches, unreadable, walked.new,
                           walked.changed, walked.gone, walked.folder_errors, walked.skipped_links,
                           in_collisions)
