"""Applying the configured collision policies to the instances of a batch, at migration time.

The plan recorded the collisions. Here each instance in one gets a
:class:`Verdict`: held back for the sin bin with the collision's kind as
the reason, or routed as usual, possibly as the file its policy chose over
the others with its SOP Instance UID. Routing rules cannot send a held-back
instance anywhere else, so a configuration with rules of its own cannot
let one through by leaving the collisions out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.collisions.detect import DIFFERENT_CONTENT, PATIENT_ID_TWO_NAMES
from migrator.config import CollisionConfig
from migrator.reconcile.legacy import LegacyRow, legacy_values
from migrator.reconcile.outcome import PathMapper
from migrator.state.models import Collision, CollisionMember, Instance, StorageRoot

#: At most this many paths are named in a sin bin reason.
MAX_PATHS_NAMED = 5


@dataclass(frozen=True)
class CollisionFile:
    """One file of a collision of SOP Instance UIDs."""

    id: int
    root: str
    rel_path: str
    study_uid: str | None
    mtime_ns: int
    #: The file's content number within the collision.
    variant: int


@dataclass(frozen=True)
class UidCollision:
    id: int
    kind: str
    files: list[CollisionFile]
    #: Contents (different_content) or studies (uid_in_two_studies).
    variants: int


@dataclass(frozen=True)
class PatientCollision:
    id: int
    files: int
    #: Patient names.
    variants: int


@dataclass
class ChunkCollisions:
    """The collisions of one chunk of instances."""

    by_uid: dict[str, UidCollision]
    #: Instance id -> the Patient ID collision it is in.
    by_patient: dict[int, PatientCollision]


@dataclass(frozen=True)
class Verdict:
    """The decision of the collision policies for one instance."""

    #: The sin bin reason (a collision kind) when the instance is held back.
    hold: str | None = None
    #: The explanation that follows the kind in the sin bin reason.
    detail: str | None = None
    #: The policy that let the instance through, for the audit's route rule.
    note: str | None = None
    #: True when the policy chose this file among those with its SOP Instance
    #: UID, so that it is not a duplicate of another one any more.
    chosen: bool = False


def _parts(ids: Sequence[int], size: int = 1000) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def load_chunk_collisions(session: Session, instance_ids: Sequence[int]) -> ChunkCollisions:
    """Return the collisions that the instances are in, with every file of each UID collision."""
    uid_collisions: dict[int, tuple[str, str, int]] = {}
    by_patient: dict[int, PatientCollision] = {}
    for part in _parts(instance_ids):
        for instance_id, collision_id, kind, key, count, variants in session.execute(
                select(CollisionMember.instance_id, Collision.id, Collision.kind, Collision.key, Collision.files,
                       Collision.variants)
                .join(Collision, Collision.id == CollisionMember.collision_id)
                .where(CollisionMember.instance_id.in_(part))):
            if kind == PATIENT_ID_TWO_NAMES:
                by_patient[instance_id] = PatientCollision(collision_id, count, variants)
            else:
                uid_collisions[collision_id] = (kind, key, variants)
    files: dict[int, list[CollisionFile]] = defaultdict(list)
    for part in _parts(sorted(uid_collisions)):
        for collision_id, instance_id, root, rel_path, study_uid, mtime_ns, variant in session.execute(
                select(CollisionMember.collision_id, Instance.id, StorageRoot.name, Instance.rel_path,
                       Instance.study_uid, Instance.mtime_ns, CollisionMember.variant)
                .join(Instance, Instance.id == CollisionMember.instance_id)
                .join(StorageRoot, StorageRoot.id == Instance.root_id)
                .where(CollisionMember.collision_id.in_(part)).order_by(Instance.id)):
            files[collision_id].append(CollisionFile(instance_id, root, rel_path, study_uid, mtime_ns, variant))
    by_uid = {key: UidCollision(collision_id, kind, files[collision_id], variants)
              for collision_id, (kind, key, variants) in uid_collisions.items()}
    return ChunkCollisions(by_uid, by_patient)


def collision_verdict(policies: CollisionConfig, collisions: ChunkCollisions, instance_id: int, uid: str,
                      row: LegacyRow | None, path_column: str | None, mapper: PathMapper) -> Verdict:
    """Apply the policies to one instance.

    A SOP Instance UID collision is decided first, then a Patient ID with
    two names, so an instance held back for both shows the former.
    """
    by_uid = _uid_verdict(policies, collisions.by_uid.get(uid), instance_id, row, path_column, mapper)
    if by_uid.hold:
        return by_uid
    patient = collisions.by_patient.get(instance_id)
    if patient is None:
        return by_uid
    setting = f"collisions.{PATIENT_ID_TWO_NAMES} = {policies.patient_id_two_names}"
    if policies.patient_id_two_names == "sinbin":
        return Verdict(hold=PATIENT_ID_TWO_NAMES, detail=(
            f"its Patient ID has {patient.variants} different patient names in {patient.files} files "
            f"(collision {patient.id}); {setting} holds back every one; 'migrator collisions' lists them"))
    note = "; ".join(part for part in (by_uid.note, setting) if part)
    return Verdict(note=note, chosen=by_uid.chosen)


def _uid_verdict(policies: CollisionConfig, collision: UidCollision | None, instance_id: int,
                 row: LegacyRow | None, path_column: str | None, mapper: PathMapper) -> Verdict:
    if collision is None:
        return Verdict()
    kind = collision.kind
    policy = policies.different_content if kind == DIFFERENT_CONTENT else policies.uid_in_two_studies
    setting = f"collisions.{kind} = {policy}"
    summary = _summary(collision)
    if policy == "send_all":
        return Verdict(note=setting, chosen=True)
    if policy == "sinbin":
        return Verdict(hold=kind, detail=f"{summary}; {setting} holds back every one")
    if policy == "send_newest":
        chosen: CollisionFile | None = max(collision.files, key=lambda file: (file.mtime_ns, file.id))
        why_none = ""
    else:
        chosen, why_none = _referenced(collision, row, path_column, mapper)
    if chosen is None:
        return Verdict(hold=kind, detail=f"{summary}; {why_none}, so {setting} holds back every one")
    if chosen.id == instance_id:
        return Verdict(note=f"{setting} chose this file", chosen=True)
    return Verdict(hold=kind, detail=f"{summary}; {setting} sends {chosen.root}/{chosen.rel_path}")


def _summary(collision: UidCollision) -> str:
    named = ", ".join(f"{file.root}/{file.rel_path}" for file in collision.files[:MAX_PATHS_NAMED])
    more = len(collision.files) - MAX_PATHS_NAMED
    if more > 0:
        named += f" and {more} more"
    if collision.kind == DIFFERENT_CONTENT:
        return (f"{len(collision.files)} files with this SOP Instance UID have {collision.variants} "
                f"different contents (collision {collision.id}: {named})")
    return (f"this SOP Instance UID is in {collision.variants} studies "
            f"(collision {collision.id}: {named})")


def _referenced(collision: UidCollision, row: LegacyRow | None, path_column: str | None,
                mapper: PathMapper) -> tuple[CollisionFile | None, str]:
    """Return the file that the legacy database references, or None and why there is none.

    With a path column the row's path names the file. Without one the row's
    study does, when the files of that study have one content.
    """
    if row is None:
        return None, "the legacy database has no row for it"
    legacy_path = row.get(path_column) if path_column else None
    if legacy_path:
        target = mapper.map(str(legacy_path))
        candidates = [file for file in collision.files if mapper.key(file.root, file.rel_path) == target]
        if not candidates:
            return None, f"the legacy database references {legacy_path}, none of them"
    else:
        study = legacy_values(row, path_column).get("StudyInstanceUID")
        candidates = [file for file in collision.files if study and file.study_uid == study]
        if not candidates:
            return None, "the legacy database returns no file path and none of them is in its study"
    if len({file.variant for file in candidates}) > 1:
        return None, f"the legacy database references {len(candidates)} of them, with different contents"
    return min(candidates, key=lambda file: file.id), ""
