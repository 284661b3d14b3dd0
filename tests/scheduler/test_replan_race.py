"""A plan that compared a folder before a running batch recorded an outcome does not undo it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update

from migrator.index.folder import ParsedFile
from migrator.index.store import RootIndexSummary, store_parsed
from migrator.state.models import Batch, BatchStatus, Instance
from scheduler.plan.run import plan
from tests.support import prepare_migration

ENDPOINTS = {name: ("NONE", 9) for name in ("main", "nonpixel", "sinbin")}


def _changed(instance: Instance) -> ParsedFile:
    """The instance's file as a later plan parses it after a touch: a new time, same fields."""
    fields = {"transfer_syntax": instance.transfer_syntax, "sop_class_uid": instance.sop_class_uid,
              "sop_instance_uid": instance.sop_instance_uid, "study_uid": instance.study_uid,
              "series_uid": instance.series_uid, "modality": instance.modality,
              "has_pixel_data": instance.has_pixel_data}
    return ParsedFile(instance.rel_path, instance.folder, instance.size, instance.mtime_ns + 1, fields, None)


def test_stale_comparison_keeps_outcome(tmp_path: Path, sqlite_url: str) -> None:
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    plan(migration.settings, migration.sessions)
    with migration.sessions() as session:
        instance = session.scalars(select(Instance).where(Instance.parse_error.is_(None))).first()
        assert instance is not None
        stale = {instance.rel_path: (instance.id, instance.size, instance.mtime_ns, None)}
        # The running batch records its outcome after the plan compared the folder.
        session.execute(update(Instance).where(Instance.id == instance.id).values(outcome="sent"))
        session.commit()
        summary = RootIndexSummary("root")
        store_parsed(session, instance.root_id, [_changed(instance)], stale, summary)
        outcome, batch_id = session.execute(select(Instance.outcome, Instance.batch_id)
                                            .where(Instance.id == instance.id)).one()
    assert outcome == "sent"
    assert batch_id == instance.batch_id
    assert summary.changed_after_outcome == 1


def test_running_batch_keeps_pending_instance(tmp_path: Path, sqlite_url: str) -> None:
    """A changed file whose batch is sending it now is left to that batch."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    plan(migration.settings, migration.sessions)
    with migration.sessions() as session:
        instance = session.scalars(select(Instance).where(Instance.parse_error.is_(None))).first()
        assert instance is not None
        session.execute(update(Batch).where(Batch.id == instance.batch_id)
                        .values(status=BatchStatus.RUNNING.value))
        session.commit()
        known = {instance.rel_path: (instance.id, instance.size, instance.mtime_ns, None)}
        store_parsed(session, instance.root_id, [_changed(instance)], known, RootIndexSummary("root"))
        batch_id = session.scalar(select(Instance.batch_id).where(Instance.id == instance.id))
    assert batch_id == instance.batch_id
