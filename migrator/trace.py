"""Everything recorded about one file, for ``migrator trace``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from migrator.state.models import (
    AuditEntry,
    Batch,
    Instance,
    SinBinItem,
    StorageRoot,
    TransformItem,
)


@dataclass(frozen=True)
class Trace:
    instance: Instance
    root: StorageRoot
    batch: Batch | None
    audit: list[AuditEntry]
    sinbin: list[SinBinItem]


def find_traces(session: Session, key: str) -> list[Trace]:
    """Find instances by SOP Instance UID, path relative to a root, or absolute path.

    The new SOP Instance UID that ``migrator transform`` gave an instance finds it too.
    """
    conditions = [Instance.sop_instance_uid == key, Instance.rel_path == key,
                  Instance.id.in_(select(TransformItem.instance_id)
                                  .where(TransformItem.new_sop_instance_uid == key))]
    for root in session.scalars(select(StorageRoot)):
        # An absolute path, or "root name/relative path" as trace and reasons print it.
        for prefix in (root.path.rstrip("/") + "/", root.name + "/"):
            if key.startswith(prefix):
                conditions.append((Instance.root_id == root.id) & (Instance.rel_path == key[len(prefix):]))
    traces = []
    for instance in session.scalars(select(Instance).where(or_(*conditions)).order_by(Instance.id)):
        traces.append(Trace(
            instance=instance,
            root=session.get_one(StorageRoot, instance.root_id),
            batch=session.get(Batch, instance.batch_id) if instance.batch_id else None,
            audit=list(session.scalars(select(AuditEntry).where(AuditEntry.instance_id == instance.id)
                                       .order_by(AuditEntry.id))),
            sinbin=list(session.scalars(select(SinBinItem).where(SinBinItem.instance_id == instance.id)
                                        .order_by(SinBinItem.id))),
        ))
    return traces
