"""Listing the collisions that the last plan recorded, one row per file, for ``migrator collisions``."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from migrator.collisions.detect import PATIENT_ID_TWO_NAMES
from migrator.config import CollisionConfig
from migrator.state.models import (
    Collision,
    CollisionKind,
    CollisionMember,
    Instance,
    StorageRoot,
)


@dataclass(frozen=True)
class CollisionRow:
    """One file of one collision. It contains no patient value: a Patient ID appears as its keyed hash."""

    collision: int
    kind: str
    #: The SOP Instance UID, or for patient_id_two_names the keyed hash of the Patient ID.
    key: str
    files: int
    variants: int
    #: The file's content number (UID kinds) or patient name number (patient_id_two_names).
    variant: int
    root: str
    path: str
    sop_instance_uid: str | None
    study_instance_uid: str | None
    size: int
    #: The file's modification time, UTC.
    modified: str
    #: SHA-256 of the file, for the files the check had to hash.
    content_sha256: str | None
    #: The reason the content could not be compared, if it could not.
    note: str | None
    #: The instance's outcome so far, empty while it waits for ``migrator start``.
    outcome: str | None

    @property
    def variant_label(self) -> str:
        return f"{'name' if self.kind == PATIENT_ID_TWO_NAMES else 'content'} {self.variant}"


def policy_of(policies: CollisionConfig, kind: str) -> str:
    """Return the configured policy for a collision kind."""
    value: str = getattr(policies, kind)
    return value


def collision_counts(session: Session) -> dict[str, tuple[int, int]]:
    """Return kind -> (collisions, files) for every kind, zeros included."""
    counts = {kind.value: (0, 0) for kind in CollisionKind}
    for kind, collisions, files in session.execute(
            select(Collision.kind, func.count(distinct(Collision.id)), func.count(CollisionMember.instance_id))
            .join(CollisionMember, CollisionMember.collision_id == Collision.id).group_by(Collision.kind)):
        counts[kind] = (collisions, files)
    return counts


def iter_collision_rows(session: Session, kind: str | None = None) -> Iterator[CollisionRow]:
    """Yield the files of every collision (or of one kind), collision by collision, streamed from the database."""
    query = (select(Collision.id, Collision.kind, Collision.key, Collision.files, Collision.variants,
                    CollisionMember.variant, StorageRoot.name, Instance.rel_path, Instance.sop_instance_uid,
                    Instance.study_uid, Instance.size, Instance.mtime_ns, Instance.content_sha256,
                    CollisionMember.note, Instance.outcome)
             .join(CollisionMember, CollisionMember.collision_id == Collision.id)
             .join(Instance, Instance.id == CollisionMember.instance_id)
             .join(StorageRoot, StorageRoot.id == Instance.root_id)
             .order_by(Collision.kind, Collision.id, CollisionMember.variant, Instance.id)
             .execution_options(yield_per=2000))
    if kind is not None:
        query = query.where(Collision.kind == kind)
    for (collision_id, row_kind, key, files, variants, variant, root, rel_path, uid, study, size, mtime_ns,
         sha256, note, outcome) in session.execute(query):
        modified = datetime.fromtimestamp(mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        yield CollisionRow(collision_id, row_kind, key, files, variants, variant, root, rel_path, uid, study,
                           size, modified, sha256, note, outcome)


def write_csv(rows: Iterator[CollisionRow], target: Path | TextIO) -> int:
    """Write the rows as CSV with a header line; return how many rows were written."""
    if isinstance(target, Path):
        with target.open("w", encoding="utf-8", newline="") as file:
            return write_csv(rows, file)
    writer = csv.writer(target)
    writer.writerow([column.name for column in fields(CollisionRow)])
    written = 0
    for row in rows:
        writer.writerow(["" if value is None else value for value in astuple(row)])
        written += 1
    return written
