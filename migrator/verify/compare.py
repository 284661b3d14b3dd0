"""Comparing what the audit records for a study with what the destination stores."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from migrator.verify.query import InstanceListing, StudyMatch
from migrator.verify.recorded import RecordedInstance, RecordedStudy


class Kind(str, enum.Enum):
    """The kind of a report row: a study's result, or one instance's difference."""

    #: Study: the destination stores every instance the audit records as
    #: delivered to it, and no other, and its own count agrees.
    VERIFIED = "verified"
    #: Study: the audit's count, the count of instances found and the
    #: destination's Number of Study Related Instances do not all agree.
    COUNT_MISMATCH = "count_mismatch"
    #: Study: the counts agree, but instances are missing and as many others are unexpected.
    DIFFERENT_INSTANCES = "different_instances"
    #: Study: a C-FIND response was cut short even for a single series, so
    #: instances may be missing from the listing; no instance is reported missing.
    INCOMPLETE = "incomplete"
    #: Study: a C-FIND failed, so the study was not verified.
    QUERY_FAILED = "query_failed"
    #: Study or instance: the audit records a delivery without a Study or
    #: SOP Instance UID to look for.
    NOT_VERIFIABLE = "not_verifiable"
    #: Instance: delivered according to the audit, not at the destination.
    MISSING = "missing"
    #: Instance: at the destination, but the audit does not record it as
    #: delivered there in this study (failed, sent elsewhere, or not in the audit).
    UNEXPECTED = "unexpected"
    #: Instance: the destination's Storage Commitment report lists it as failed.
    NOT_COMMITTED = "not_committed"
    #: Study: no Storage Commitment report arrived for its instances.
    COMMIT_UNCONFIRMED = "commit_unconfirmed"
    #: Destination: every study was checked. A report without this row for
    #: a destination stopped early, and ``--recheck`` checks all its studies.
    FINISHED = "finished"
    #: Destination: the verification stopped with the error in the detail.
    NOT_VERIFIED = "not_verified"


@dataclass
class ReportRow:
    """One row of the verification report."""

    kind: Kind
    study_uid: str
    sop_instance_uid: str | None = None
    series_uid: str | None = None
    #: The audit's record of the instance; None for study rows and unknown instances.
    recorded: RecordedInstance | None = None
    #: Study rows: instances the audit records as delivered, instances found,
    #: and the destination's Number of Study Related Instances.
    expected: int | None = None
    found: int | None = None
    destination_count: int | None = None
    detail: str | None = None


@dataclass
class StudyResult:
    """The comparison of one study: its study row, then a row per instance that differs."""

    study: ReportRow
    instances: list[ReportRow] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.study.kind is Kind.VERIFIED

    def count(self, kind: Kind) -> int:
        return sum(row.kind is kind for row in self.instances)

    @property
    def rows(self) -> list[ReportRow]:
        return [self.study, *self.instances]


def compare_study(study: RecordedStudy, match: StudyMatch | None,
                  listing: InstanceListing | None) -> StudyResult:
    """Compare the audit's instances of one study with the destination's.

    ``match`` is the STUDY level match, None when the destination does not
    store the study, and ``listing`` the IMAGE level listing, None in the
    same case. An instance counts as expected when its last audit entry at
    the destination is a delivery, under the Study and SOP Instance UIDs it
    was sent with.
    """
    expected: dict[str, RecordedInstance] = {}
    not_delivered: dict[str, RecordedInstance] = {}
    unverifiable: list[ReportRow] = []
    for instance in study.instances:
        sop_instance_uid = instance.uids.sop_instance
        if sop_instance_uid is None:
            if instance.delivered:
                unverifiable.append(ReportRow(Kind.NOT_VERIFIABLE, study.study_uid, recorded=instance,
                                              detail="the audit records no SOP Instance UID"))
        elif instance.delivered:
            expected[sop_instance_uid] = instance
        else:
            not_delivered[sop_instance_uid] = instance

    stored = listing.instances if listing is not None else {}
    destination_count = match.instance_count if match is not None else None
    rows: list[ReportRow] = list(unverifiable)
    incomplete = listing is not None and bool(listing.incomplete)
    if not incomplete:
        for sop_instance_uid, instance in sorted(expected.items()):
            if sop_instance_uid not in stored:
                rows.append(ReportRow(Kind.MISSING, study.study_uid, sop_instance_uid,
                                      instance.uids.series, recorded=instance))
    for sop_instance_uid, series_uid in sorted(stored.items()):
        if sop_instance_uid not in expected:
            rows.append(ReportRow(Kind.UNEXPECTED, study.study_uid, sop_instance_uid, series_uid,
                                  recorded=not_delivered.get(sop_instance_uid)))

    counts = {len(expected), len(stored)}
    if destination_count is not None:
        counts.add(destination_count)
    if incomplete:
        assert listing is not None
        kind, detail = Kind.INCOMPLETE, "; ".join(listing.incomplete)
    elif len(counts) > 1:
        kind, detail = Kind.COUNT_MISMATCH, None
    elif rows and unverifiable:
        kind, detail = Kind.NOT_VERIFIABLE, None
    elif rows:
        kind, detail = Kind.DIFFERENT_INSTANCES, None
    else:
        kind, detail = Kind.VERIFIED, None
    if match is None and expected:
        detail = "the destination has no study with this Study Instance UID"
    study_row = ReportRow(kind, study.study_uid, expected=len(expected), found=len(stored),
                          destination_count=destination_count, detail=detail)
    return StudyResult(study_row, rows)


def query_failed(study: RecordedStudy, error: str) -> StudyResult:
    """Return the result of a study whose C-FIND failed."""
    expected = len({instance.uids.sop_instance for instance in study.delivered})
    return StudyResult(ReportRow(Kind.QUERY_FAILED, study.study_uid, expected=expected, detail=error))


def without_study_uid(study: RecordedStudy) -> StudyResult:
    """Return the result of the instances the audit records without a Study Instance UID."""
    rows = [ReportRow(Kind.NOT_VERIFIABLE, "", instance.uids.sop_instance, instance.uids.series,
                      recorded=instance, detail="the audit records no Study Instance UID")
            for instance in study.delivered]
    return StudyResult(ReportRow(Kind.NOT_VERIFIABLE, "", expected=len(rows),
                                 detail="instances without a Study Instance UID cannot be queried"),
                       rows)
