"""Tests for deciding orphan, matched, superseded or duplicate for an indexed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.config import ReconcileOutcome, RootConfig
from migrator.reconcile.outcome import IndexedFile, PathMapper, reconcile

UID = "1.2.826.0.1.3680043.8.498.1001"
PATH_COLUMN = "FilePath"

ROOTS = [
    RootConfig(name="share03", path=Path("/mnt/share03"), legacy_path_prefix="\\\\pacs01\\share03\\"),
    RootConfig(name="share04", path=Path("/mnt/share04"), legacy_path_prefix="\\\\PACS01\\Share04"),
    RootConfig(name="local", path=Path("/srv/archive")),
]


@pytest.fixture
def mapper() -> PathMapper:
    return PathMapper(ROOTS, case_insensitive=True)


def indexed(file_id: int, rel_path: str, root: str = "share03") -> IndexedFile:
    return IndexedFile(id=file_id, root=root, rel_path=rel_path, sop_instance_uid=UID)


def legacy_row(file_path: str | None = None) -> dict[str, object]:
    row: dict[str, object] = {"SOPInstanceUID": UID, "PatientID": "P001", "PatientName": "DOE^JANE"}
    if file_path is not None:
        row[PATH_COLUMN] = file_path
    return row


class TestReconcile:
    def test_orphan_when_no_row(self, mapper: PathMapper) -> None:
        """A file without a legacy row is an orphan."""
        file = indexed(1, "2019/01/IMG0001.dcm")

        result = reconcile(file, None, [file], PATH_COLUMN, mapper)

        assert result.outcome is ReconcileOutcome.ORPHAN
        assert result.values == {}
        assert result.detail == "no row in the legacy database"

    def test_matched_when_row_points_here(self, mapper: PathMapper) -> None:
        """A row whose path is this file matches and carries its values."""
        file = indexed(1, "2019/01/IMG0001.dcm")
        row = legacy_row("\\\\pacs01\\share03\\2019\\01\\IMG0001.dcm")

        result = reconcile(file, row, [file], PATH_COLUMN, mapper)

        assert result.outcome is ReconcileOutcome.MATCHED
        assert result.values == {"PatientID": "P001", "PatientName": "DOE^JANE"}
        assert result.detail is None

    def test_matched_without_path_column(self, mapper: PathMapper) -> None:
        """Without a path column any row matches the only file with the UID."""
        file = indexed(1, "2019/01/IMG0001.dcm")

        result = reconcile(file, legacy_row(), [file], None, mapper)

        assert result.outcome is ReconcileOutcome.MATCHED
        assert result.values == {"PatientID": "P001", "PatientName": "DOE^JANE"}

    def test_superseded_when_row_points_elsewhere(self, mapper: PathMapper) -> None:
        """A row naming a file that is not indexed supersedes this file."""
        file = indexed(1, "2019/01/IMG0001.dcm")
        legacy_path = "\\\\pacs01\\share03\\2019\\02\\MERGED.dcm"

        result = reconcile(file, legacy_row(legacy_path), [file], PATH_COLUMN, mapper)

        assert result.outcome is ReconcileOutcome.SUPERSEDED
        assert result.detail == f"the legacy database references {legacy_path}"
        assert result.values == {"PatientID": "P001", "PatientName": "DOE^JANE"}

    def test_configured_path_column_used(self, mapper: PathMapper) -> None:
        """The path is read from the configured column, whatever its name."""
        file = indexed(1, "2019/01/IMG0001.dcm")
        row = {"SOPInstanceUID": UID, "LegacyPath": "\\\\pacs01\\share03\\2019\\02\\MERGED.dcm"}

        result = reconcile(file, row, [file], "LegacyPath", mapper)

        assert result.outcome is ReconcileOutcome.SUPERSEDED
        assert result.values == {}

    def test_superseded_when_path_outside_roots(self, mapper: PathMapper) -> None:
        """A row naming a path under no configured root supersedes this file."""
        file = indexed(1, "2019/01/IMG0001.dcm")
        row = legacy_row("\\\\pacs02\\share01\\2019\\01\\IMG0001.dcm")

        result = reconcile(file, row, [file], PATH_COLUMN, mapper)

        assert result.outcome is ReconcileOutcome.SUPERSEDED

    def test_duplicate_when_row_points_at_other(self, mapper: PathMapper) -> None:
        """Of two files with one UID, the referenced one matches and the other is a duplicate."""
        referenced = indexed(2, "2019/01/IMG0001.dcm")
        copy = indexed(1, "copies/IMG0001.dcm", root="share04")
        same_uid = [copy, referenced]
        row = legacy_row("\\\\pacs01\\share03\\2019\\01\\IMG0001.dcm")

        referenced_result = reconcile(referenced, row, same_uid, PATH_COLUMN, mapper)
        copy_result = reconcile(copy, row, same_uid, PATH_COLUMN, mapper)

        assert referenced_result.outcome is ReconcileOutcome.MATCHED
        assert copy_result.outcome is ReconcileOutcome.DUPLICATE
        assert copy_result.detail == (
            "same SOP Instance UID as share03/2019/01/IMG0001.dcm, "
            "which the legacy database references"
        )

    def test_duplicate_first_indexed_wins(self, mapper: PathMapper) -> None:
        """Without a path column the file indexed first matches and later ones are duplicates."""
        first = indexed(3, "a/IMG0001.dcm")
        second = indexed(5, "b/IMG0001.dcm")
        third = indexed(9, "c/IMG0001.dcm")
        same_uid = [third, first, second]

        outcomes = [
            reconcile(file, legacy_row(), same_uid, None, mapper).outcome
            for file in (first, second, third)
        ]

        assert outcomes[0] is ReconcileOutcome.MATCHED
        assert outcomes[1] is ReconcileOutcome.DUPLICATE
        assert outcomes[2] is ReconcileOutcome.DUPLICATE

    def test_duplicate_detail_names_first(self, mapper: PathMapper) -> None:
        """A later duplicate names the file indexed first."""
        first = indexed(3, "a/IMG0001.dcm")
        second = indexed(5, "b/IMG0001.dcm")
        later = indexed(9, "c/IMG0001.dcm")

        result = reconcile(later, legacy_row(), [second, later, first], None, mapper)

        assert result.detail == "same SOP Instance UID as share03/a/IMG0001.dcm, indexed first"

    def test_empty_path_falls_back_to_first_indexed(self, mapper: PathMapper) -> None:
        """A row with an empty path is treated as having no path column."""
        first = indexed(3, "a/IMG0001.dcm")
        later = indexed(5, "b/IMG0001.dcm")
        row = legacy_row("")

        assert reconcile(first, row, [first, later], PATH_COLUMN, mapper).outcome is (
            ReconcileOutcome.MATCHED
        )
        assert reconcile(later, row, [first, later], PATH_COLUMN, mapper).outcome is (
            ReconcileOutcome.DUPLICATE
        )


class TestPathMapper:
    def test_windows_prefix_maps_to_root(self, mapper: PathMapper) -> None:
        """A UNC path under a root's prefix maps to the root and a POSIX relative path."""
        assert mapper.map("\\\\pacs01\\share03\\2019\\01\\IMG0001.dcm") == (
            "share03", "2019/01/img0001.dcm"
        )

    def test_prefix_without_trailing_separator(self, mapper: PathMapper) -> None:
        """A prefix configured without a trailing backslash still maps."""
        assert mapper.map("\\\\pacs01\\share04\\x\\y.dcm") == ("share04", "x/y.dcm")

    def test_prefix_is_not_a_string_prefix(self, mapper: PathMapper) -> None:
        """share03 does not claim paths under share030."""
        assert mapper.map("\\\\pacs01\\share030\\x.dcm") is None

    def test_root_path_used_without_prefix(self, mapper: PathMapper) -> None:
        """A root without legacy_path_prefix is matched by its own path."""
        assert mapper.map("/srv/archive/2020/IMG.dcm") == ("local", "2020/img.dcm")

    def test_unknown_prefix_maps_to_none(self, mapper: PathMapper) -> None:
        """A path under no root maps to None."""
        assert mapper.map("D:\\images\\IMG0001.dcm") is None

    def test_surrounding_whitespace_ignored(self, mapper: PathMapper) -> None:
        """Padding around a legacy path, as CHAR columns return it, is ignored."""
        assert mapper.map("  \\\\pacs01\\share03\\a.dcm  ") == ("share03", "a.dcm")

    def test_case_insensitive_match(self, mapper: PathMapper) -> None:
        """A case-insensitive mapper matches paths that differ only in case."""
        legacy = mapper.map("\\\\PACS01\\SHARE03\\2019\\01\\IMG0001.DCM")

        assert legacy == mapper.key("share03", "2019/01/img0001.dcm")
        assert legacy == mapper.key("share03", "2019/01/IMG0001.dcm")

    def test_case_sensitive_match(self) -> None:
        """A case-sensitive mapper keeps case and matches only the exact spelling."""
        mapper = PathMapper(ROOTS, case_insensitive=False)

        assert mapper.map("\\\\PACS01\\SHARE03\\a.dcm") is None
        assert mapper.map("\\\\pacs01\\share03\\A.dcm") == ("share03", "A.dcm")
        assert mapper.map("\\\\pacs01\\share03\\A.dcm") != mapper.key("share03", "a.dcm")

    def test_matched_across_case(self, mapper: PathMapper) -> None:
        """Reconciliation matches a file whose legacy path differs only in case."""
        file = indexed(1, "2019/01/Img0001.dcm")
        row = legacy_row("\\\\PACS01\\SHARE03\\2019\\01\\IMG0001.DCM")

        assert reconcile(file, row, [file], PATH_COLUMN, mapper).outcome is ReconcileOutcome.MATCHED
