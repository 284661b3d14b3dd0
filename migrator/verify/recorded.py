"""The state database's record of each instance at one destination.

The last audit entry of each instance at a destination decides what the
destination should store: ``sent``, ``sent_with_warning`` or ``sinbinned``
means that it should store the instance, and any other outcome means that
it should not. Header corrections may change the UIDs that were sent: a
study merge changes the Study Instance UID. So each instance is placed
under the UIDs of the data set that was sent, as the entry's ``changes``
record them, not under the UIDs that the index read from the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

from sqlalchemy import ColumnElement, Select, Text, cast, select
from sqlalchemy.orm import Session

from migrator.state.models import DELIVERED, AuditEntry, Instance, StorageRoot
from migrator.state.queries import last_attempts

#: Outcome values that mean the destination of the entry stores the instance.
DELIVERED_OUTCOMES = frozenset(outcome.value for outcome in DELIVERED)

#: Rows fetched from the state database per round trip while streaming.
FETCH_ROWS = 5000


@dataclass(frozen=True)
class SentUids:
    """The UIDs of an instance as the destination received them."""

    study: str | None
    series: str | None
    sop_instance: str | None


def sent_uids(study: str | None, series: str | None, sop_instance: str | None,
              changes: Iterable[dict[str, Any]] | None) -> SentUids:
    """Apply the UID changes of an audit entry to the UIDs read from the file.

    ``changes`` is the entry's list of ``{"keyword", "old", "new"}``. A
    change of StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID
    replaces that UID, and other keywords are ignored.
    """
    uids: dict[str, str | None] = {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                   "SOPInstanceUID": sop_instance}
    for change in changes or ():
        keyword = change.get("keyword")
        new = change.get("new")
        if keyword in uids and (new is None or isinstance(new, str)):
            uids[keyword] = new or None
    return SentUids(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])


def changes_uids(changes: Iterable[dict[str, Any]] | None) -> bool:
    """Tell whether ``changes`` contains a change of the Study, Series or SOP Instance UID."""
    keywords = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    return any(change.get("keyword") in keywords for change in changes or ())


@dataclass(frozen=True)
class RecordedInstance:
    """One instance and the last audit entry of its attempts at one destination."""

    instance_id: int
    root: str
    rel_path: str
    uids: SentUids
    sop_class_uid: str | None
    outcome: str
    reason: str | None
    destination: str | None

    @property
    def delivered(self) -> bool:
        """True when the entry means that the destination stores the instance."""
        return self.outcome in DELIVERED_OUTCOMES


@dataclass
class RecordedStudy:
    """The instances that the audit places in one study at one destination."""

    #: The Study Instance UID sent; "" for instances without one.
    study_uid: str
    instances: list[RecordedInstance] = field(default_factory=list)

    @property
    def delivered(self) -> list[RecordedInstance]:
        return [instance for instance in self.instances if instance.delivered]


def _last_entries(*conditions: ColumnElement[bool]) -> Select[Unpack[tuple[Any, ...]]]:
    """Select each instance matching ``conditions`` with the last of its audit entries that match."""
    last = last_attempts(*conditions)
    return (select(Instance.id, StorageRoot.name, Instance.rel_path, Instance.study_uid,
                   Instance.series_uid, Instance.sop_instance_uid, Instance.sop_class_uid,
                   AuditEntry.outcome, AuditEntry.reason, AuditEntry.destination, AuditEntry.changes)
            .join(last, last.c.id == AuditEntry.id)
            .join(Instance, Instance.id == AuditEntry.instance_id)
            .join(StorageRoot, StorageRoot.id == Instance.root_id))


def _recorded_rows(destinations: Sequence[str]) -> Select[Unpack[tuple[Any, ...]]]:
    """Select each instance with the last audit entry of its attempts at any of ``destinations``."""
    return _last_entries(AuditEntry.destination.in_(destinations))


def _recorded(row: Sequence[Any]) -> RecordedInstance:
    (instance_id, root, rel_path, study, series, sop_instance, sop_class, outcome, reason,
     destination, changes) = row
    return RecordedInstance(instance_id, root, rel_path, sent_uids(study, series, sop_instance, changes),
                            sop_class, outcome, reason, destination)


class RecordedAudit:
    """The audit of one archive, read study by study.

    The archive is one destination, or several that store into it; the
    last audit entry of each instance at any of them decides.

    Only the current study and the instances whose UIDs a header
    correction changed are kept in memory, not the whole audit, because
    the instances are streamed from the state database in the order of
    their indexed Study Instance UID.
    """

    def __init__(self, session: Session, destinations: Sequence[str]) -> None:
        self._session = session
        self.destinations = tuple(destinations)
        self._corrected = self._load_corrected()
        self._corrected_by_sop = {instance.uids.sop_instance: instance
                                  for instance in self._corrected.values() if instance.uids.sop_instance}

    def _load_corrected(self) -> dict[int, RecordedInstance]:
        """Load the instances whose audit entry records a change of one of their UIDs."""
        # The LIKE filter lets the database skip the many entries that only
        # correct demographics; changes_uids() then checks each keyword.
        query = (_recorded_rows(self.destinations)
                 .where(cast(AuditEntry.changes, Text).like("%InstanceUID%")))
        corrected: dict[int, RecordedInstance] = {}
        for row in self._session.execute(query.execution_options(yield_per=FETCH_ROWS)):
            if changes_uids(row[-1]):
                instance = _recorded(row)
                corrected[instance.instance_id] = instance
        return corrected

    def studies(self, only: set[str] | None = None) -> Iterator[RecordedStudy]:
        """Yield each study with the instances the audit places in it at these destinations.

        With ``only``, yield just the studies whose Study Instance UID is in
        it. Instances without a Study Instance UID come last, in a study
        whose UID is "".
        """
        # The stream skips the corrected instances; each is added to the study it was sent in.
        moved_in: dict[str, list[RecordedInstance]] = {}
        for instance in self._corrected.values():
            moved_in.setdefault(instance.uids.study or "", []).append(instance)
        query = (_recorded_rows(self.destinations).where(Instance.study_uid.is_not(None))
                 .order_by(Instance.study_uid, Instance.id))
        current: RecordedStudy | None = None
        for row in self._session.execute(query.execution_options(yield_per=FETCH_ROWS)):
            if row[0] in self._corrected:
                continue
            instance = _recorded(row)
            study_uid = instance.uids.study or ""
            if current is not None and current.study_uid != study_uid:
                yield from self._finish(current, moved_in, only)
                current = None
            if current is None:
                current = RecordedStudy(study_uid)
            current.instances.append(instance)
        if current is not None:
            yield from self._finish(current, moved_in, only)
        without_study = [_recorded(row) for row in self._session.execute(
            _recorded_rows(self.destinations).where(Instance.study_uid.is_(None)).order_by(Instance.id))
            if row[0] not in self._corrected]
        for study_uid in sorted(moved_in):
            if study_uid:
                yield from self._finish(RecordedStudy(study_uid), moved_in, only)
        if without_study or "" in moved_in:
            yield from self._finish(RecordedStudy("", without_study), moved_in, only)

    @staticmethod
    def _finish(study: RecordedStudy, moved_in: dict[str, list[RecordedInstance]],
                only: set[str] | None) -> Iterator[RecordedStudy]:
        study.instances.extend(moved_in.pop(study.study_uid, []))
        if only is None or study.study_uid in only:
            yield study

    def describe(self, sop_instance_uid: str) -> list[RecordedInstance]:
        """Return what the audit records about every instance sent with this SOP Instance UID.

        Each instance comes with its last audit entry at any destination;
        an instance without an audit entry is left out.
        """
        found: dict[int, RecordedInstance] = {}
        corrected = self._corrected_by_sop.get(sop_instance_uid)
        ids = [corrected.instance_id] if corrected else []
        ids += self._session.scalars(select(Instance.id).where(
            Instance.sop_instance_uid == sop_instance_uid)).all()
        if not ids:
            return []
        for row in self._session.execute(_last_entries(Instance.id.in_(ids))):
            instance = _recorded(row)
            if instance.uids.sop_instance == sop_instance_uid:
                found[instance.instance_id] = instance
        return sorted(found.values(), key=lambda instance: instance.instance_id)
