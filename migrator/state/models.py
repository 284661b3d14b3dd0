"""The state schema: storage roots, the instance index, batches, audit, sin bin.

Alembic migrations under ``alembic/versions`` create these tables; change
both together.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: UIDs and codes as the files carry them. Legacy archives contain values
#: longer than the 64 characters PS3.5 allows, so no length limit is set.
UID = Text()


class Outcome(str, enum.Enum):
    """The one final outcome recorded for each instance."""

    SENT = "sent"
    #: The destination returned a warning status (0xB000, 0xB006, 0xB007).
    SENT_WITH_WARNING = "sent_with_warning"
    #: Stored in the sin bin archive for review, with a reason.
    SINBINNED = "sinbinned"
    #: Not stored anywhere, for the recorded reason. ``start --retry-failed`` tries again.
    FAILED = "failed"
    #: Deliberately not sent by a routing rule.
    SKIPPED = "skipped"
    #: The file could not be parsed as DICOM; it stays where it is.
    UNREADABLE = "unreadable"
    #: Only in the audit: ``migrator start --dry-run`` prepared the instance
    #: and did not send it. Never an instance's outcome.
    DRY_RUN = "dry_run"


#: The outcomes an instance can have; the others appear only in the audit.
FINAL_OUTCOMES = tuple(outcome for outcome in Outcome if outcome is not Outcome.DRY_RUN)
#: Outcomes that mean the instance is stored at a destination.
DELIVERED = (Outcome.SENT, Outcome.SENT_WITH_WARNING, Outcome.SINBINNED)


class BatchStatus(str, enum.Enum):
    PLANNED = "planned"
    #: Sent to a worker queue in the distributed mode, not yet claimed.
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    #: Transient failures remained after the last automatic retry.
    FAILED = "failed"


#: Batch statuses that no worker will change any more.
FINISHED = [BatchStatus.DONE.value, BatchStatus.FAILED.value]


class Base(DeclarativeBase):
    pass


class StorageRoot(Base):
    __tablename__ = "storage_roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    path: Mapped[str] = mapped_column(Text)


class Instance(Base):
    """One file found under a storage root."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("root_id", "rel_path", name="uq_instances_root_path"),
        Index("ix_instances_root_folder", "root_id", "folder"),
        Index("ix_instances_sop_instance_uid", "sop_instance_uid"),
        Index("ix_instances_unbatched", "root_id", "batch_id", "study_uid"),
        Index("ix_instances_batch", "batch_id"),
        Index("ix_instances_patient", "patient_id_hash", "patient_name_hash"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("storage_roots.id"))
    #: Path relative to the root, with forward slashes.
    rel_path: Mapped[str] = mapped_column(Text)
    folder: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax: Mapped[str | None] = mapped_column(UID)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    study_uid: Mapped[str | None] = mapped_column(UID)
    series_uid: Mapped[str | None] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(Text)
    has_pixel_data: Mapped[bool | None] = mapped_column(Boolean)
    #: Keyed hashes (see :mod:`migrator.collisions.patient`) of the header's
    #: Patient ID and of its normalised Patient Name; NULL when the header has
    #: none. The index stores no patient value in clear.
    patient_id_hash: Mapped[str | None] = mapped_column(String(32))
    patient_name_hash: Mapped[str | None] = mapped_column(String(32))
    #: SHA-256 of the whole file, in hex. Only files that share their SOP
    #: Instance UID, study and size with another file are hashed.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    #: Why the header could not be read; NULL for a readable file.
    parse_error: Mapped[str | None] = mapped_column(Text)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    #: The final outcome, NULL until the instance has one.
    outcome: Mapped[str | None] = mapped_column(String(32))
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A group of instances migrated together: whole studies, or one folder."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_status", "status", "root_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("storage_roots.id"))
    #: Dispatch order within the root.
    seq: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.PLANNED.value)
    instance_count: Mapped[int] = mapped_column(Integer)
    byte_count: Mapped[int] = mapped_column(BigInteger)
    #: The worker that leased the batch, and when the lease expires.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Automatic retries after transient failures so far.
    retries: Mapped[int] = mapped_column(Integer, default=0)
    #: A batch waiting to be retried is not claimed before this time.
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Why the batch failed, once its automatic retries are used up.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


#: The values that return a finished batch to the plan with its automatic retries reset.
REPLANNED: dict[str, object] = {"status": BatchStatus.PLANNED.value, "retries": 0, "retry_at": None,
                                "failure_reason": None}


class AuditEntry(Base):
    """One attempt at one instance; the last entry carries its final outcome."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_instance", "instance_id"), Index("ix_audit_time", "finished_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    reconciliation: Mapped[str | None] = mapped_column(String(32))
    route_rule: Mapped[str | None] = mapped_column(String(200))
    destination: Mapped[str | None] = mapped_column(String(100))
    #: The C-STORE response status, NULL when no response arrived.
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    #: True for a failure that a later attempt may not meet (an association
    #: failure, a timeout, 0xA7xx out of resources); the batch retries it.
    transient: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Header corrections: a list of {"keyword", "old", "new"}.
    changes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    host: Mapped[str] = mapped_column(String(255))


class SinBinItem(Base):
    """An instance held back for review, and whether it was released."""

    __tablename__ = "sinbin_items"
    __table_args__ = (Index("ix_sinbin_instance", "instance_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    reason: Mapped[str] = mapped_column(Text)
    #: True when a copy is in the sin bin archive; unreadable files stay on disk.
    archived: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    released_to: Mapped[str | None] = mapped_column(String(100))
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RunControl(Base):
    """A switch that every dispatcher reads, such as pausing the run."""

    __tablename__ = "run_controls"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The host and user that set it, for the audit of operator actions.
    updated_by: Mapped[str] = mapped_column(String(255))


class IndexFolderStatus(str, enum.Enum):
    """The state of one folder in a distributed indexing run."""

    #: Found, not yet sent to its root's queue.
    PENDING = "pending"
    #: Sent to its root's queue, not yet claimed by a worker.
    QUEUED = "queued"
    RUNNING = "running"
    #: Indexed, or recorded with the error that kept it from being listed.
    DONE = "done"


class IndexRun(Base):
    """One ``migrator plan --distributed`` whose folders the workers index."""

    __tablename__ = "index_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: NULL while folders remain; the next distributed plan resumes such a run.
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The host that ran the planner.
    host: Mapped[str] = mapped_column(String(255))


class IndexFolder(Base):
    """One folder of a distributed indexing run, indexed by one worker task.

    The counters hold what indexing the folder found, and the worker
    writes them in the transaction that writes the folder's instances, so
    the sums over a run equal the summary of a local walk.
    """

    __tablename__ = "index_folders"
    __table_args__ = (Index("ix_index_folders_run_status", "run_id", "status", "root_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    root_id: Mapped[int] = mapped_column(ForeignKey("storage_roots.id"))
    #: Path relative to the root as ``Instance.folder`` stores it; "" is the root itself.
    folder: Mapped[str] = mapped_column(Text)
    #: The path's bytes when it is not valid UTF-8 (``folder`` then has ``\xNN`` escapes).
    raw_folder: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default=IndexFolderStatus.PENDING.value)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The worker process ("host:pid") that holds the folder, and when its lease expires.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The Celery worker node name (``migrator-ROOTS@host``) that indexed the folder.
    worker: Mapped[str | None] = mapped_column(String(255))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: True once the planner has counted the folder in its progress display.
    reported: Mapped[bool] = mapped_column(Boolean, default=False)
    files: Mapped[int] = mapped_column(Integer, default=0)
    new: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    unreadable: Mapped[int] = mapped_column(Integer, default=0)
    changed_after_outcome: Mapped[int] = mapped_column(Integer, default=0)
    gone: Mapped[int] = mapped_column(Integer, default=0)
    #: Why the folder could not be listed; NULL when it was.
    error: Mapped[str | None] = mapped_column(Text)
    #: Symbolic links in the folder that the walk did not follow, with the reason.
    skipped_links: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))


class CollisionKind(str, enum.Enum):
    """The kinds of collision that ``migrator plan`` looks for after indexing."""

    #: Files with one SOP Instance UID in one study whose bytes differ.
    DIFFERENT_CONTENT = "different_content"
    #: One SOP Instance UID in the headers of two or more studies.
    UID_IN_TWO_STUDIES = "uid_in_two_studies"
    #: One Patient ID with two or more patient names.
    PATIENT_ID_TWO_NAMES = "patient_id_two_names"


class Collision(Base):
    """A group of indexed files that cannot all reach the destination as they are."""

    __tablename__ = "collisions"
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_collisions_kind_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    #: The SOP Instance UID, or for a Patient ID the keyed hash of it.
    key: Mapped[str] = mapped_column(Text)
    files: Mapped[int] = mapped_column(Integer)
    #: The number of different contents, studies or patient names.
    variants: Mapped[int] = mapped_column(Integer)
    first_found_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: When the last plan found it; a plan deletes the collisions it no longer finds.
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CollisionMember(Base):
    """One file of a collision."""

    __tablename__ = "collision_members"
    __table_args__ = (Index("ix_collision_members_instance", "instance_id"),)

    collision_id: Mapped[int] = mapped_column(ForeignKey("collisions.id"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), primary_key=True)
    #: Which content (for a SOP Instance UID) or which patient name (for a
    #: Patient ID) the file has, numbered from 1 in the order of the index.
    variant: Mapped[int] = mapped_column(Integer)
    #: The reason the file's content could not be compared, if it could not.
    note: Mapped[str | None] = mapped_column(Text)


class HashKey(Base):
    """The key of the keyed patient hashes in the index, or its fingerprint."""

    __tablename__ = "hash_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The key itself when the state database keeps it; NULL when it comes
    #: from the environment variable that ``collisions.patient_key_env`` names.
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: An HMAC of a fixed text under the key, to detect a changed key.
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TransformStatus(str, enum.Enum):
    """The state of one listed pixel transformation."""

    #: Loaded, not yet done; ``migrator transform run`` takes it.
    PENDING = "pending"
    SENT = "sent"
    SENT_WITH_WARNING = "sent_with_warning"
    #: Refused (for example because of patient geometry) and stored in the
    #: sin bin archive untransformed.
    SINBINNED = "sinbinned"
    #: Not delivered, for the reason recorded; the next run tries again.
    FAILED = "failed"


class TransformItem(Base):
    """One SOP Instance UID whose pixels are rotated or flipped before it is sent."""

    __tablename__ = "transform_items"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", name="uq_transform_items_uid"),
        Index("ix_transform_items_status", "status"),
        Index("ix_transform_items_instance", "instance_id"),
        Index("ix_transform_items_new_uid", "new_sop_instance_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    #: A :class:`migrator.transform.transformation.Transformation` value.
    transformation: Mapped[str] = mapped_column(String(32))
    #: "csv" or "legacy_db".
    source: Mapped[str] = mapped_column(String(16))
    #: The CSV file and line, or the legacy database column and its value.
    source_detail: Mapped[str] = mapped_column(Text)
    #: The indexed file, or the file received by C-MOVE once it arrived.
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"))
    status: Mapped[str] = mapped_column(String(32), default=TransformStatus.PENDING.value)
    #: "index" or "c-move": where the last attempt read the instance from.
    retrieved_from: Mapped[str | None] = mapped_column(String(16))
    destination: Mapped[str | None] = mapped_column(String(100))
    #: The SOP Instance UID sent, when ``transform.new_uid`` gave it a new one.
    new_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    #: Why the last attempt failed or was refused, or what it changed in the encoding.
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
