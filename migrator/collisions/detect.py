"""The collision check that ``migrator plan`` runs after indexing.

The check finds, with GROUP BY over the index in ranges of
:data:`ROWS_PER_CHUNK` rows, the SOP Instance UIDs that more than one file
carries and the Patient IDs (as keyed hashes) that come with more than one
patient name. It then looks closer at those groups only:

- a SOP Instance UID in two or more studies is ``uid_in_two_studies``;
- otherwise files of one UID whose bytes differ are ``different_content``.
  Files of one study and one size are hashed (SHA-256) to tell. A file with
  a size or study of its own differs from the others, so it is not read.
  Byte-identical copies are no collision: reconciliation keeps sending one
  of them and calling the others duplicates;
- a Patient ID whose files have two or more normalised names is
  ``patient_id_two_names`` unless the legacy database's values for those
  files leave one name per Patient ID.

Each plan records what it finds in ``collisions`` and ``collision_members``,
updating the collisions found before and deleting those it no longer finds,
so a second plan reports each collision once. A file that already has a
content hash is not read again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from migrator import audit
from migrator.collisions.patient import PatientHasher, load_patient_hasher
from migrator.config import Settings
from migrator.errors import ConfigError
from migrator.reconcile.legacy import LegacyDatabase, chunked, legacy_values
from migrator.state.models import (
    Collision,
    CollisionKind,
    CollisionMember,
    Instance,
    StorageRoot,
)

LOGGER = logging.getLogger(__name__)

#: Index rows per GROUP BY query, so no query or transaction spans the whole index.
ROWS_PER_CHUNK = 100_000
#: Groups examined and committed together.
GROUPS_PER_STEP = 500

DIFFERENT_CONTENT = CollisionKind.DIFFERENT_CONTENT.value
UID_IN_TWO_STUDIES = CollisionKind.UID_IN_TWO_STUDIES.value
PATIENT_ID_TWO_NAMES = CollisionKind.PATIENT_ID_TWO_NAMES.value


class ChangedFile(Exception):
    """The file's size or modification time is not the one the index recorded."""


def sha256_of_file(path: Path, size: int, mtime_ns: int) -> str:
    """Return the SHA-256 of the whole file in hex.

    Raises
    ------
    ChangedFile
        The file changed since it was indexed, so its hash would not
        describe the indexed file.
    OSError
        The file cannot be read.
    """
    with open(path, "rb") as fp:
        stat = os.fstat(fp.fileno())
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            raise ChangedFile("it changed since it was indexed; run 'migrator plan' again")
        return hashlib.file_digest(fp, "sha256").hexdigest()


#: Hashes one file: (path, indexed size, indexed mtime_ns) -> SHA-256 in hex.
HashFile = Callable[[Path, int, int], str]


@dataclass
class CollisionCheck:
    """The counts and problems of one check."""

    #: Collisions per kind, and the files in them.
    collisions: Counter[str] = field(default_factory=Counter)
    files: Counter[str] = field(default_factory=Counter)
    #: Byte-identical copies of a file with the same SOP Instance UID, not
    #: counting the first file of each group.
    identical_copies: int = 0
    #: Patient IDs whose header names differ while the legacy database gives one name.
    resolved_by_legacy: int = 0
    #: Files this check read to hash their content.
    hashed: int = 0
    #: Files whose content could not be read, with the reason; they count as different.
    not_compared: list[str] = field(default_factory=list)


@dataclass
class _UidFile:
    id: int
    root: str
    rel_path: str
    study_uid: str | None
    size: int
    mtime_ns: int
    content_sha256: str | None
    note: str | None = None


def key_ranges(session: Session, column: InstrumentedAttribute[Any],
               rows: int = ROWS_PER_CHUNK) -> Iterator[ColumnElement[bool]]:
    """Yield conditions that split the non-NULL values of ``column`` into ranges of about ``rows`` rows.

    A value never spans two ranges, because each range ends at a value and
    the next starts after it. Each boundary is found with one ordered index
    scan of ``rows`` entries.
    """
    low: Any = None
    while True:
        condition: ColumnElement[bool] = column.is_not(None)
        if low is not None:
            condition = and_(condition, column > low)
        high = session.scalar(select(column).where(condition).order_by(column).offset(rows - 1).limit(1))
        if high is not None:
            condition = and_(condition, column <= high)
        yield condition
        if high is None:
            return
        low = high


def check_collisions(settings: Settings, sessions: sessionmaker[Session],
                     legacy: LegacyDatabase | None = None,
                     hash_file: HashFile | None = None) -> CollisionCheck:
    """Find the collisions in the index and record them, replacing what the last check recorded.

    Parameters
    ----------
    legacy
        The legacy database; opened from ``settings`` when a Patient ID
        with two names needs its values.
    hash_file
        Hashes one file; :func:`sha256_of_file` by default.

    Raises
    ------
    LegacyDatabaseError
        The legacy database was needed and its query failed.
    ConfigError
        The patient hash key is missing or not the index's (see
        :func:`~migrator.collisions.patient.load_patient_hasher`).
    """
    started = audit.now()
    check = CollisionCheck()
    opened: list[LegacyDatabase] = []

    def legacy_database() -> LegacyDatabase:
        if legacy is not None:
            return legacy
        if not opened:
            opened.append(LegacyDatabase(settings.legacy, settings.base_dir))
        return opened[0]

    try:
        with sessions() as session:
            hasher = load_patient_hasher(session, settings)
            _check_uids(session, settings, started, check, hash_file or sha256_of_file)
            _check_patients(session, settings, hasher, started, check, legacy_database)
            _delete_stale(session, started)
    finally:
        for database in opened:
            database.engine.dispose()
    for kind, count in sorted(check.collisions.items()):
        LOGGER.info("%d collision(s) of kind %s with %d file(s)", count, kind, check.files[kind])
    return check


def _check_uids(session: Session, settings: Settings, started: datetime, check: CollisionCheck,
                hash_file: HashFile) -> None:
    uid = Instance.sop_instance_uid
    for condition in key_ranges(session, uid):
        shared = [str(value) for value in
                  session.scalars(select(uid).where(condition).group_by(uid).having(func.count() > 1))]
        for part in chunked(shared, GROUPS_PER_STEP):
            groups = _uid_files(session, part)
            _hash_where_needed(session, settings, groups, check, hash_file)
            for key, files in groups.items():
                _classify_uid(session, key, files, started, check)
            session.commit()
        session.commit()


def _uid_files(session: Session, uids: Sequence[str]) -> dict[str, list[_UidFile]]:
    groups: dict[str, list[_UidFile]] = defaultdict(list)
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.id, StorageRoot.name, Instance.rel_path, Instance.study_uid,
               Instance.size, Instance.mtime_ns, Instance.content_sha256)
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .where(Instance.sop_instance_uid.in_(uids)).order_by(Instance.id))
    for uid, instance_id, root, rel_path, study_uid, size, mtime_ns, content_sha256 in rows:
        groups[str(uid)].append(_UidFile(instance_id, root, rel_path, study_uid, size, mtime_ns, content_sha256))
    return groups


def _hash_where_needed(session: Session, settings: Settings, groups: dict[str, list[_UidFile]],
                       check: CollisionCheck, hash_file: HashFile) -> None:
    """Hash the files that share their study and size with another file of their UID and have no hash yet."""
    todo: list[_UidFile] = []
    for files in groups.values():
        alike = Counter((file.study_uid, file.size) for file in files)
        todo += [file for file in files
                 if file.content_sha256 is None and alike[(file.study_uid, file.size)] > 1]
    if not todo:
        return

    def hash_one(file: _UidFile) -> tuple[str | None, str | None]:
        try:
            path = settings.resolve(settings.root(file.root).path) / file.rel_path
            return hash_file(path, file.size, file.mtime_ns), None
        except (OSError, ChangedFile, ConfigError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return None, f"content not compared: {reason}"

    # Reading files is I/O bound, and hashlib releases the GIL while it hashes.
    with ThreadPoolExecutor(settings.run.processes) as pool:
        results = list(pool.map(hash_one, todo))
    for file, (digest, note) in zip(todo, results):
        if digest is None:
            file.note = note
            check.not_compared.append(f"{file.root}/{file.rel_path}: {note}")
            LOGGER.warning("%s/%s: %s; it counts as different from the other files with its "
                           "SOP Instance UID", file.root, file.rel_path, note)
            continue
        file.content_sha256 = digest
        check.hashed += 1
        session.execute(update(Instance).where(Instance.id == file.id).values(content_sha256=digest))


def _classify_uid(session: Session, uid: str, files: list[_UidFile], started: datetime,
                  check: CollisionCheck) -> None:
    alike = Counter((file.study_uid, file.size) for file in files)
    variant_of: dict[object, int] = {}
    members: list[tuple[int, int, str | None]] = []
    for file in files:
        # A file with a study and size of its own differs from every other
        # file of the group. So does a file whose content could not be read.
        content: object = ((file.study_uid, file.size, file.content_sha256)
                           if alike[(file.study_uid, file.size)] > 1 and file.content_sha256 else file.id)
        variant = variant_of.setdefault(content, len(variant_of) + 1)
        members.append((file.id, variant, file.note))
    studies = len({file.study_uid for file in files})
    if studies > 1:
        _record(session, UID_IN_TWO_STUDIES, uid, members, studies, started, check)
    elif len(variant_of) > 1:
        _record(session, DIFFERENT_CONTENT, uid, members, len(variant_of), started, check)
    else:
        check.identical_copies += len(files) - 1


def _check_patients(session: Session, settings: Settings, hasher: PatientHasher, started: datetime,
                    check: CollisionCheck, legacy: Callable[[], LegacyDatabase]) -> None:
    patient = Instance.patient_id_hash
    for condition in key_ranges(session, patient):
        candidates = [str(value) for value in session.scalars(
            select(patient).where(condition, Instance.patient_name_hash.is_not(None)).group_by(patient)
            .having(func.count(Instance.patient_name_hash.distinct()) > 1))]
        for part in chunked(candidates, GROUPS_PER_STEP):
            _check_patient_group(session, settings, hasher, legacy(), part, started, check)
            session.commit()
        session.commit()


def _check_patient_group(session: Session, settings: Settings, hasher: PatientHasher, legacy: LegacyDatabase,
                         patient_ids: Sequence[str], started: datetime, check: CollisionCheck) -> None:
    """Compare the names of these Patient IDs after the legacy database's corrections, and record the conflicts.

    NOTE: only the files of these Patient IDs are compared. A file that the
    legacy database moves to another Patient ID is compared with the other
    files moved there, not with that Patient ID's own files.
    """
    files = session.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.patient_id_hash, Instance.patient_name_hash)
        .where(Instance.patient_id_hash.in_(patient_ids), Instance.patient_name_hash.is_not(None))
        .order_by(Instance.id)).all()
    rows = legacy.fetch(uid for _, uid, _, _ in files if uid)
    path_column = settings.legacy.path_column
    # Effective Patient ID -> [(instance id, effective name, header Patient ID)]
    effective: dict[str, list[tuple[int, str, str | None]]] = defaultdict(list)
    for instance_id, uid, header_id, header_name in files:
        row = rows.get(uid or "")
        values = legacy_values(row, path_column) if row else {}
        patient_id = hasher.patient_id(values["PatientID"]) if "PatientID" in values else header_id
        name = hasher.patient_name(values["PatientName"]) if "PatientName" in values else header_name
        if patient_id and name:
            effective[patient_id].append((instance_id, name, header_id))
    conflicting: set[str] = set()
    for patient_id, named in effective.items():
        variant_of: dict[str, int] = {}
        members: list[tuple[int, int, str | None]] = [
            (instance_id, variant_of.setdefault(name, len(variant_of) + 1), None) for instance_id, name, _ in named]
        if len(variant_of) > 1:
            _record(session, PATIENT_ID_TWO_NAMES, patient_id, members, len(variant_of), started, check)
            conflicting.update(header_id for _, _, header_id in named if header_id)
    check.resolved_by_legacy += len(set(patient_ids) - conflicting)


def _record(session: Session, kind: str, key: str, members: list[tuple[int, int, str | None]],
            variants: int, started: datetime, check: CollisionCheck) -> None:
    """Insert or update one collision with its members, as this check found it."""
    existing = session.execute(select(Collision.id, Collision.checked_at)
                               .where(Collision.kind == kind, Collision.key == key)).one_or_none()
    if existing is None:
        collision_id = session.execute(insert(Collision).values(
            kind=kind, key=key, files=0, variants=variants, first_found_at=started, checked_at=started)
            .returning(Collision.id)).scalar_one()
        check.collisions[kind] += 1
    else:
        collision_id, checked_at = existing
        if _as_utc(checked_at) < started:
            session.execute(delete(CollisionMember).where(CollisionMember.collision_id == collision_id))
            check.collisions[kind] += 1
        else:
            # NOTE: found again in this check, through another range of
            # Patient IDs; the members are added, and their name numbers
            # may count one name twice.
            known = set(session.scalars(select(CollisionMember.instance_id)
                                        .where(CollisionMember.collision_id == collision_id)))
            offset = session.scalar(select(func.max(CollisionMember.variant))
                                    .where(CollisionMember.collision_id == collision_id)) or 0
            members = [(instance_id, variant + offset, note) for instance_id, variant, note in members
                       if instance_id not in known]
            variants += offset
    if members:
        session.execute(insert(CollisionMember), [
            {"collision_id": collision_id, "instance_id": instance_id, "variant": variant, "note": note}
            for instance_id, variant, note in members])
    files = session.scalar(select(func.count()).select_from(CollisionMember)
                           .where(CollisionMember.collision_id == collision_id)) or 0
    session.execute(update(Collision).where(Collision.id == collision_id)
                    .values(files=files, variants=variants, checked_at=started))
    check.files[kind] += len(members)


def _as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware datetime; SQLite returns stored times without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=audit.now().tzinfo)


def _delete_stale(session: Session, started: datetime) -> None:
    """Delete the collisions that this check did not find again."""
    stale = select(Collision.id).where(Collision.checked_at < started)
    gone = session.execute(delete(CollisionMember).where(CollisionMember.collision_id.in_(stale)))
    session.execute(delete(Collision).where(Collision.id.in_(stale)))
    session.commit()
    if gone.rowcount:  # type: ignore[attr-defined]
        LOGGER.info("%d file(s) are no longer in a collision found before", gone.rowcount)  # type: ignore[attr-defined]
