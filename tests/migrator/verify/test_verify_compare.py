"""Reading the audit per destination and comparing it with a destination's listing.

The audit rows are written to a SQLite state database by hand, so each
test controls the outcomes, destinations and header changes exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, StorageRoot
from migrator.verify import Kind, RecordedAudit, compare_study, sent_uids
from migrator.verify.query import InstanceListing, StudyMatch
from migrator.verify.recorded import RecordedStudy

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
STUDY_A = "1.2.3.1"
STUDY_B = "1.2.3.2"
SERIES_A = "1.2.3.1.1"
SERIES_B = "1.2.3.2.1"


class State:
    """A state database with one storage root, filled instance by instance."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        with sessions() as session:
            root = StorageRoot(name="share01", path="/mnt/share01")
            session.add(root)
            session.commit()
            self.root_id = root.id
        self._count = 0

    def instance(self, sop: str, study: str | None, series: str | None,
                 *attempts: tuple[str, str | None, list[dict[str, Any]] | None]) -> int:
        """Add an instance with one audit entry per (outcome, destination, changes)."""
        self._count += 1
        with self.sessions() as session:
            instance = Instance(root_id=self.root_id, rel_path=f"f/{self._count}.dcm", folder="f", size=1,
                                mtime_ns=0, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                sop_instance_uid=sop, study_uid=study, series_uid=series,
                                outcome=attempts[-1][0] if attempts else None, indexed_at=NOW)
            session.add(instance)
            session.flush()
            for outcome, destination, changes in attempts:
                session.add(AuditEntry(instance_id=instance.id, outcome=outcome, destination=destination,
                                       changes=changes, reason=f"{outcome} by the test", started_at=NOW,
                                       finished_at=NOW, host="test"))
            session.commit()
            return instance.id


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(open_state(f"sqlite:///{tmp_path / 'state.sqlite3'}"))


def merge(old: str, new: str) -> list[dict[str, Any]]:
    """Return the changes of a study merge with a demographic correction beside it."""
    return [{"keyword": "PatientName", "old": "DOE^J", "new": "DOE^JANE"},
            {"keyword": "StudyInstanceUID", "old": old, "new": new}]


def studies(state: State, *destinations: str, only: set[str] | None = None) -> dict[str, RecordedStudy]:
    with state.sessions() as session:
        return {study.study_uid: study for study in RecordedAudit(session, destinations).studies(only)}


def listing(*sops: str, series: str = SERIES_B) -> InstanceListing:
    return InstanceListing({sop: series for sop in sops})


def test_sent_uids_apply_uid_changes_only() -> None:
    uids = sent_uids(STUDY_A, SERIES_A, "1.9", merge(STUDY_A, STUDY_B)
                     + [{"keyword": "SOPInstanceUID", "old": "1.9", "new": "1.10"}])
    assert uids.study == STUDY_B
    assert uids.series == SERIES_A
    assert uids.sop_instance == "1.10"


def test_sent_uids_without_changes() -> None:
    uids = sent_uids(STUDY_A, SERIES_A, "1.9", None)
    assert (uids.study, uids.series, uids.sop_instance) == (STUDY_A, SERIES_A, "1.9")


def test_merged_instance_counts_in_corrected_study(state: State) -> None:
    """An instance sent with a corrected Study Instance UID is expected in that study only."""
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", merge(STUDY_A, STUDY_B)))
    state.instance("1.2", STUDY_B, SERIES_B, ("sent", "main", None))
    found = studies(state, "main")
    assert list(found) == [STUDY_B]
    assert sorted(i.uids.sop_instance for i in found[STUDY_B].instances) == ["1.1", "1.2"]
    result = compare_study(found[STUDY_B], StudyMatch(2), listing("1.1", "1.2"))
    assert result.study.kind is Kind.VERIFIED
    assert (result.study.expected, result.study.found, result.study.destination_count) == (2, 2, 2)
    assert result.instances == []


def test_merged_instance_missing_in_corrected_study(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", merge(STUDY_A, STUDY_B)))
    state.instance("1.2", STUDY_B, SERIES_B, ("sent", "main", None))
    result = compare_study(studies(state, "main")[STUDY_B], StudyMatch(1), listing("1.2"))
    assert result.study.kind is Kind.COUNT_MISMATCH
    missing = [row for row in result.instances if row.kind is Kind.MISSING]
    assert [(row.study_uid, row.sop_instance_uid) for row in missing] == [(STUDY_B, "1.1")]
    assert missing[0].recorded is not None
    assert missing[0].recorded.rel_path == "f/1.dcm"


def test_merged_instance_in_old_study_unexpected(state: State) -> None:
    """An instance the destination stores under its uncorrected study is unexpected there."""
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", merge(STUDY_A, STUDY_B)))
    state.instance("1.3", STUDY_A, SERIES_A, ("sent", "main", None))
    result = compare_study(studies(state, "main")[STUDY_A], StudyMatch(2), listing("1.1", "1.3"))
    assert [(row.kind, row.sop_instance_uid) for row in result.instances] == [(Kind.UNEXPECTED, "1.1")]
    assert result.study.kind is Kind.COUNT_MISMATCH


def test_study_emptied_by_merge_not_listed(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", merge(STUDY_A, STUDY_B)))
    assert list(studies(state, "main")) == [STUDY_B]


def test_failed_instance_held_is_unexpected(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    state.instance("1.2", STUDY_A, SERIES_A, ("failed", "main", None))
    result = compare_study(studies(state, "main")[STUDY_A], StudyMatch(2), listing("1.1", "1.2"))
    unexpected = [row for row in result.instances if row.kind is Kind.UNEXPECTED]
    assert [row.sop_instance_uid for row in unexpected] == ["1.2"]
    assert unexpected[0].recorded is not None
    assert unexpected[0].recorded.outcome == "failed"
    assert result.study.expected == 1


def test_last_entry_at_destination_decides(state: State) -> None:
    """A retry that succeeded is expected; a delivery followed by a failure there is not."""
    state.instance("1.1", STUDY_A, SERIES_A, ("failed", "main", None), ("sent", "main", None))
    state.instance("1.2", STUDY_A, SERIES_A, ("sent", "main", None), ("failed", "main", None))
    study = studies(state, "main")[STUDY_A]
    delivered = {i.uids.sop_instance: i.delivered for i in study.instances}
    assert delivered == {"1.1": True, "1.2": False}


def test_other_destinations_ignored(state: State) -> None:
    """A sin bin delivery is not expected at main, and main's is not expected in the sin bin."""
    state.instance("1.1", STUDY_A, SERIES_A, ("sinbinned", "sinbin", None))
    state.instance("1.2", STUDY_A, SERIES_A, ("sent", "main", None))
    state.instance("1.3", STUDY_A, SERIES_A, ("skipped", None, None))
    assert [i.uids.sop_instance for i in studies(state, "main")[STUDY_A].delivered] == ["1.2"]
    assert [i.uids.sop_instance for i in studies(state, "sinbin")[STUDY_A].delivered] == ["1.1"]


def test_released_item_expected_in_both(state: State) -> None:
    """An item released from the sin bin is expected at both the sin bin and its new destination."""
    state.instance("1.1", STUDY_A, SERIES_A, ("sinbinned", "sinbin", None),
                   ("sent", "main", merge(STUDY_A, STUDY_B)))
    assert [i.uids.sop_instance for i in studies(state, "sinbin")[STUDY_A].delivered] == ["1.1"]
    assert [i.uids.sop_instance for i in studies(state, "main")[STUDY_B].delivered] == ["1.1"]


def test_destinations_of_one_archive_read_together(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    state.instance("1.2", STUDY_A, SERIES_A, ("sent", "nonpixel", None))
    study = studies(state, "main", "nonpixel")[STUDY_A]
    assert sorted(i.uids.sop_instance for i in study.delivered) == ["1.1", "1.2"]


def test_only_filters_studies(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    state.instance("1.2", STUDY_B, SERIES_B, ("sent", "main", None))
    assert list(studies(state, "main", only={STUDY_B})) == [STUDY_B]


def test_corrected_sop_instance_uid_compared(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A,
                   ("sent", "main", [{"keyword": "SOPInstanceUID", "old": "1.1", "new": "1.1.5"}]))
    study = studies(state, "main")[STUDY_A]
    assert compare_study(study, StudyMatch(1), listing("1.1.5")).study.kind is Kind.VERIFIED
    result = compare_study(study, StudyMatch(1), listing("1.1"))
    assert {(row.kind, row.sop_instance_uid) for row in result.instances} == {
        (Kind.MISSING, "1.1.5"), (Kind.UNEXPECTED, "1.1")}
    assert result.study.kind is Kind.DIFFERENT_INSTANCES


def test_study_absent_at_destination(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    result = compare_study(studies(state, "main")[STUDY_A], None, None)
    assert result.study.kind is Kind.COUNT_MISMATCH
    assert result.study.detail == "the destination has no study with this Study Instance UID"
    assert [row.kind for row in result.instances] == [Kind.MISSING]


def test_destination_count_disagreeing_is_mismatch(state: State) -> None:
    """Listing and audit agree, but the destination counts another instance."""
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    result = compare_study(studies(state, "main")[STUDY_A], StudyMatch(2), listing("1.1"))
    assert result.study.kind is Kind.COUNT_MISMATCH
    assert result.instances == []


def test_incomplete_listing_reports_no_missing(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A, ("sent", "main", None))
    state.instance("1.2", STUDY_A, SERIES_A, ("sent", "main", None))
    cut = InstanceListing({"1.1": SERIES_A}, incomplete=["cut short"])
    result = compare_study(studies(state, "main")[STUDY_A], StudyMatch(None), cut)
    assert result.study.kind is Kind.INCOMPLETE
    assert result.study.detail == "cut short"
    assert result.instances == []


def test_instance_without_study_uid_not_verifiable(state: State) -> None:
    state.instance("1.1", None, None, ("sent", "main", None))
    found = studies(state, "main")
    assert list(found) == [""]
    assert [i.uids.sop_instance for i in found[""].instances] == ["1.1"]


def test_describe_finds_record_by_corrected_sop(state: State) -> None:
    state.instance("1.1", STUDY_A, SERIES_A,
                   ("sent", "main", [{"keyword": "SOPInstanceUID", "old": "1.1", "new": "1.1.5"}]))
    state.instance("1.2", STUDY_A, SERIES_A, ("failed", "nonpixel", None))
    with state.sessions() as session:
        audit = RecordedAudit(session, ["main"])
        assert [r.outcome for r in audit.describe("1.1.5")] == ["sent"]
        assert [(r.outcome, r.destination) for r in audit.describe("1.2")] == [("failed", "nonpixel")]
        assert audit.describe("9.9") == []
