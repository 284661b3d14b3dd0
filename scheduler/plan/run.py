"""``migrator plan``: index every root, then cut batches, then summarize."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import Settings
from migrator.state.models import Batch, Instance, StorageRoot
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


def plan(settings: Settings, sessions: sessionmaker[Session], mode: Mode | None = None,
         on_progress: Callable[[str, int], None] | None = None, distributed: bool = False,
         on_folders: Callable[[str, int, int], None] | None = None) -> list[RootPlanSummary]:
    """Bring the index up to date and batch everything not yet batched.

    With ``distributed`` the Celery workers of each root index it (see
    :mod:`scheduler.plan.distributed`), and ``on_folders`` is called with
    (root name, folders done, folders waiting). Batches are cut here either way.
    """
    mode = mode or settings.batches.mode
    if distributed:
        walked = index_roots_distributed(settings, sessions, on_progress, on_folders)
    else:
        walked = index_roots(settings, sessions, on_progress)
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
    return RootPlanSummary(name, files, int(size), studies, batches, unreadable, walked.new,
                           walked.changed, walked.gone, walked.folder_errors, walked.skipped_links)
