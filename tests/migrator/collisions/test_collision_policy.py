"""The verdict of each collision policy for each file of a collision."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.collisions.policy import (
    ChunkCollisions,
    CollisionFile,
    PatientCollision,
    UidCollision,
    Verdict,
    collision_verdict,
)
from migrator.config import CollisionConfig, RootConfig
from migrator.reconcile.outcome import PathMapper

UID = "1.2.826.0.1.3680043.8.498.1001"
MAPPER = PathMapper([RootConfig(name="share01", path=Path("/mnt/share01"), legacy_path_prefix="\\\\pacs\\s1\\")],
                    case_insensitive=True)
OLD = CollisionFile(1, "share01", "a/old.dcm", "1.2.3", mtime_ns=100, variant=1)
NEW = CollisionFile(2, "share01", "b/new.dcm", "1.2.3", mtime_ns=200, variant=2)
OTHER_STUDY = CollisionFile(3, "share01", "c/merged.dcm", "4.5.6", mtime_ns=50, variant=3)


def _content(*files: CollisionFile) -> ChunkCollisions:
    return ChunkCollisions({UID: UidCollision(7, "different_content", list(files), len(files))}, {})


def _studies(*files: CollisionFile) -> ChunkCollisions:
    return ChunkCollisions({UID: UidCollision(8, "uid_in_two_studies", list(files), 2)}, {})


def _row(path: str | None = None, study: str | None = None) -> dict[str, object]:
    row: dict[str, object] = {"SOPInstanceUID": UID}
    if path:
        row["FilePath"] = path
    if study:
        row["StudyInstanceUID"] = study
    return row


def _verdicts(policies: CollisionConfig, collisions: ChunkCollisions, row: dict[str, object] | None,
              path_column: str | None = "FilePath") -> dict[int, Verdict]:
    files = next(iter(collisions.by_uid.values())).files
    return {file.id: collision_verdict(policies, collisions, file.id, UID, row, path_column, MAPPER)
            for file in files}


def test_sinbin_holds_back_every_copy() -> None:
    """The default for different content holds back the referenced file too."""
    verdicts = _verdicts(CollisionConfig(), _content(OLD, NEW), _row("\\\\pacs\\s1\\a\\old.dcm"))
    for verdict in verdicts.values():
        assert verdict.hold == "different_content"
        assert verdict.detail == ("2 files with this SOP Instance UID have 2 different contents (collision 7: "
                                  "share01/a/old.dcm, share01/b/new.dcm); collisions.different_content = "
                                  "sinbin holds back every one")


def test_send_newest_sends_the_latest_file() -> None:
    """The file modified last is chosen, whatever the legacy database references."""
    verdicts = _verdicts(CollisionConfig(different_content="send_newest"), _content(OLD, NEW),
                         _row("\\\\pacs\\s1\\a\\old.dcm"))
    assert verdicts[NEW.id] == Verdict(note="collisions.different_content = send_newest chose this file",
                                       chosen=True)
    assert verdicts[OLD.id].hold == "different_content"
    assert (verdicts[OLD.id].detail or "").endswith("collisions.different_content = send_newest sends share01/b/new.dcm")


def test_send_all_sends_every_copy() -> None:
    verdicts = _verdicts(CollisionConfig(different_content="send_all"), _content(OLD, NEW), None)
    assert set(verdicts.values()) == {Verdict(note="collisions.different_content = send_all", chosen=True)}


def test_follow_legacy_db_by_path() -> None:
    """The file whose path the legacy row contains is sent; the others are held back with its name."""
    verdicts = _verdicts(CollisionConfig(different_content="follow_legacy_db"), _content(OLD, NEW),
                         _row("\\\\PACS\\S1\\b\\new.dcm"))
    assert verdicts[NEW.id].chosen
    assert verdicts[NEW.id].hold is None
    assert (verdicts[OLD.id].detail or "").endswith("follow_legacy_db sends share01/b/new.dcm")


@pytest.mark.parametrize(("row", "path_column", "reason"), [
    (None, "FilePath", "the legacy database has no row for it"),
    (_row("\\\\pacs\\s1\\z\\elsewhere.dcm"), "FilePath",
     "the legacy database references \\\\pacs\\s1\\z\\elsewhere.dcm, none of them"),
    (_row(study="1.2.3"), None, "the legacy database references 2 of them, with different contents"),
    (_row(), None, "the legacy database returns no file path and none of them is in its study"),
])
def test_follow_legacy_db_without_a_choice(row: dict[str, object] | None, path_column: str | None,
                                           reason: str) -> None:
    """Without one referenced content every copy is held back, with the reason."""
    verdicts = _verdicts(CollisionConfig(different_content="follow_legacy_db"), _content(OLD, NEW), row,
                         path_column)
    for verdict in verdicts.values():
        assert verdict.hold == "different_content"
        assert (verdict.detail or "").endswith(
            f"; {reason}, so collisions.different_content = follow_legacy_db holds back every one")


def test_two_studies_without_path_column() -> None:
    """Without a path column the file in the legacy row's study is sent."""
    verdicts = _verdicts(CollisionConfig(), _studies(OLD, OTHER_STUDY), _row(study="4.5.6"), path_column=None)
    assert verdicts[OTHER_STUDY.id].chosen
    assert verdicts[OLD.id].hold == "uid_in_two_studies"
    assert (verdicts[OLD.id].detail or "").startswith("this SOP Instance UID is in 2 studies (collision 8: ")


def test_two_studies_sinbin() -> None:
    verdicts = _verdicts(CollisionConfig(uid_in_two_studies="sinbin"), _studies(OLD, OTHER_STUDY),
                         _row("\\\\pacs\\s1\\a\\old.dcm"))
    assert {verdict.hold for verdict in verdicts.values()} == {"uid_in_two_studies"}


def test_patient_collision_after_uid_choice() -> None:
    """A file chosen among copies is still held back when its Patient ID has two names."""
    collisions = _content(OLD, NEW)
    collisions.by_patient[2] = PatientCollision(9, files=12, variants=2)
    policies = CollisionConfig(different_content="send_newest")
    held = collision_verdict(policies, collisions, 2, UID, None, "FilePath", MAPPER)
    assert held.hold == "patient_id_two_names"
    assert held.detail == ("its Patient ID has 2 different patient names in 12 files (collision 9); "
                           "collisions.patient_id_two_names = sinbin holds back every one; "
                           "'migrator collisions' lists them")
    sent = collision_verdict(policies.model_copy(update={"patient_id_two_names": "send"}), collisions, 2, UID,
                             None, "FilePath", MAPPER)
    assert sent == Verdict(note="collisions.different_content = send_newest chose this file; "
                                "collisions.patient_id_two_names = send", chosen=True)


def test_no_collision_no_verdict() -> None:
    empty = ChunkCollisions({}, {})
    assert collision_verdict(CollisionConfig(), empty, 1, UID, None, "FilePath", MAPPER) == Verdict()
