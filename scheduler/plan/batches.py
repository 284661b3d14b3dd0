"""Cutting the index into batches.

Stripe batches hold whole studies gathered across every folder of a root,
so a study's instances reach the destination together even when the legacy
PACS spread them over many folders. A study larger than one batch fills
consecutive batches. Folder batches hold whole folders in walk order, the
way a folder-at-a-time reader works; they exist for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from migrator import audit
from migrator.state.models import Batch, BatchStatus, Instance

Mode = Literal["stripe", "folder"]


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_bytes: int


class _BatchWriter:
    """Collects instance ids and writes them as one batch on :meth:`flush`."""

    def __init__(self, session: Session, root_id: int, mode: Mode) -> None:
        self.session = session
        self.root_id = root_id
        self.mode = mode
        self.seq = session.scalar(select(func.max(Batch.seq)).where(Batch.root_id == root_id)) or 0
        self.ids: list[int] = []
        self.bytes = 0
        self.written = 0

    def add(self, instance_id: int, size: int) -> None:
        self.ids.append(instance_id)
        self.bytes += size

    def flush(self) -> None:
        if not self.ids:
            return
        self.seq += 1
        batch = Batch(root_id=self.root_id, seq=self.seq, mode=self.mode,
                      status=BatchStatus.PLANNED.value, instance_count=len(self.ids),
                      byte_count=self.bytes, attempts=0, created_at=audit.now())
        self.session.add(batch)
        self.session.flush()
        for start in range(0, len(self.ids), 1000):
            self.session.execute(update(Instance).where(Instance.id.in_(self.ids[start:start + 1000]))
                                 .values(batch_id=batch.id))
        self.session.commit()
        self.ids, self.bytes = [], 0
        self.written += 1


def cut_batches(sessions: sessionmaker[Session], root_id: int, mode: Mode, limits: Limits) -> int:
    """Put every readable, unbatched instance of the root into a batch; return the count."""
    key = Instance.study_uid if mode == "stripe" else Instance.folder
    query = (
        select(Instance.id, key, Instance.size)
        .where(Instance.root_id == root_id, Instance.batch_id.is_(None),
               Instance.parse_error.is_(None), Instance.outcome.is_(None))
        .order_by(key, Instance.series_uid, Instance.rel_path)
        .execution_options(yield_per=5000)
    )
    with sessions() as reader, sessions() as session:
        writer = _BatchWriter(session, root_id, mode)
        group: list[tuple[int, int]] = []
        group_key: str | None = None
        for instance_id, value, size in reader.execute(query):
            if value != group_key and group:
                _place(writer, group, limits)
                group = []
            group_key = value
            group.append((instance_id, size))
        if group:
            _place(writer, group, limits)
        writer.flush()
        return writer.written


def _place(writer: _BatchWriter, group: list[tuple[int, int]], limits: Limits) -> None:
    """Add one study (or folder) to the open batch, starting new batches as needed."""
    group_bytes = sum(size for _, size in group)
    fits = (len(writer.ids) + len(group) <= limits.max_instances
            and writer.bytes + group_bytes <= limits.max_bytes)
    if not fits:
        writer.flush()
    for instance_id, size in group:
        full = len(writer.ids) >= limits.max_instances or (
            writer.ids and writer.bytes + size > limits.max_bytes)
        if full:
            writer.flush()
        writer.add(instance_id, size)
