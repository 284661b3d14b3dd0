"""Tests for the demo legacy archive built from the sample files of pydicom and pydicom-data."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path, PureWindowsPath
from typing import Any

import pydicom
import pytest
import sqlalchemy
from pydicom.errors import InvalidDicomError
from pydicom.uid import JPEG2000, JPEG2000Lossless

from migrator.demo.archive import (
    RECONCILED_KEYWORDS,
    DemoArchive,
    ExpectedOutcome,
    build_demo_archive,
    plan_demo_copies,
    read_sample,
)

QUERY_COLUMNS = {*RECONCILED_KEYWORDS, "SOPInstanceUID", "FilePath"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoArchive:
    return build_demo_archive(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def readable(archive: DemoArchive) -> list[ExpectedOutcome]:
    return [outcome for outcome in archive.expected if outcome.destination != "unreadable"]


@pytest.fixture(scope="module")
def headers(archive: DemoArchive, readable: list[ExpectedOutcome]) -> dict[Path, pydicom.Dataset]:
    paths = [path_of(archive, outcome) for outcome in readable]
    return {path: read_header(path) for path in paths}


@pytest.fixture(scope="module")
def legacy_rows(archive: DemoArchive, readable: list[ExpectedOutcome]) -> dict[str, dict[str, Any]]:
    uids = sorted({outcome.sop_instance_uid for outcome in readable})
    rows = run_reconciliation_query(archive, uids)
    return {row["SOPInstanceUID"]: row for row in rows}


def path_of(archive: DemoArchive, outcome: ExpectedOutcome) -> Path:
    return archive.roots[outcome.root] / outcome.rel_path


def read_header(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pydicom.dcmread(path, stop_before_pixels=True)


def run_reconciliation_query(archive: DemoArchive, uids: list[str]) -> list[dict[str, Any]]:
    engine = sqlalchemy.create_engine(archive.legacy_url)
    statement = sqlalchemy.text(archive.reconciliation_query).bindparams(
        sqlalchemy.bindparam("uids", expanding=True)
    )
    try:
        with engine.connect() as connection:
            result = connection.execute(statement, {"uids": uids})
            return [dict(row) for row in result.mappings()]
    finally:
        engine.dispose()


def location_of(archive: DemoArchive, file_path: str) -> Path:
    """Map a legacy file_path back to a path under the demo roots."""
    for root, prefix in archive.legacy_path_prefixes.items():
        if file_path.startswith(prefix):
            relative = PureWindowsPath(file_path[len(prefix) :])
            return archive.roots[root].joinpath(*relative.parts)
    raise AssertionError(f"file_path {file_path!r} has no known legacy prefix")


def outcomes_with_reason(archive: DemoArchive, reason: str) -> list[ExpectedOutcome]:
    return [outcome for outcome in archive.expected if outcome.reason == reason]


def test_expected_files_exist(archive: DemoArchive) -> None:
    for outcome in archive.expected:
        assert path_of(archive, outcome).is_file(), outcome


def test_roots_hold_only_expected_files(archive: DemoArchive) -> None:
    on_disk = {
        (root, path.relative_to(folder).as_posix())
        for root, folder in archive.roots.items()
        for path in folder.rglob("*")
        if path.is_file()
    }
    expected = {(outcome.root, outcome.rel_path) for outcome in archive.expected}

    assert on_disk == expected


def test_archive_size_and_file_count(archive: DemoArchive) -> None:
    total_bytes = sum(path_of(archive, outcome).stat().st_size for outcome in archive.expected)

    assert 40 <= len(archive.expected) <= 60
    assert total_bytes < 30 * 1024 * 1024


def test_roots_and_prefixes(archive: DemoArchive) -> None:
    assert set(archive.roots) == {"root1", "root2", "root3"}
    assert set(archive.legacy_path_prefixes) == set(archive.roots)
    assert {outcome.root for outcome in archive.expected} == set(archive.roots)
    assert archive.legacy_url == f"sqlite:///{archive.legacy_db}"
    assert archive.legacy_db.is_absolute()


def test_copies_match_expected_header(
    archive: DemoArchive, readable: list[ExpectedOutcome], headers: dict[Path, pydicom.Dataset]
) -> None:
    for outcome in readable:
        header = headers[path_of(archive, outcome)]

        assert header.SOPInstanceUID == outcome.sop_instance_uid
        assert header.file_meta.MediaStorageSOPInstanceUID == outcome.sop_instance_uid
        assert header.file_meta.TransferSyntaxUID == outcome.transfer_syntax
        assert str(header.PatientID).startswith("DEMO")


def test_copies_have_new_uids(archive: DemoArchive) -> None:
    for copy in plan_demo_copies():
        sample = read_sample(copy.source)
        header = read_header(archive.roots[copy.root] / copy.rel_path)

        assert header.SOPInstanceUID != sample.SOPInstanceUID
        assert header.SeriesInstanceUID != sample.SeriesInstanceUID
        assert header.StudyInstanceUID != sample.StudyInstanceUID
        assert header.Modality == sample.Modality


def test_copies_keep_pixel_data_and_syntax(archive: DemoArchive) -> None:
    checked_syntaxes: collections.Counter[str] = collections.Counter()
    for copy in plan_demo_copies():
        sample = read_sample(copy.source)
        written = pydicom.dcmread(archive.roots[copy.root] / copy.rel_path)

        assert written.file_meta.TransferSyntaxUID == copy.transfer_syntax
        if "PixelData" in sample:
            assert written.PixelData == sample.PixelData, copy.source.name
        if copy.transfer_syntax in (JPEG2000Lossless, JPEG2000):
            assert written.file_meta.TransferSyntaxUID == sample.file_meta.TransferSyntaxUID
            checked_syntaxes[copy.transfer_syntax] += 1

    assert checked_syntaxes[JPEG2000Lossless] >= 10
    assert checked_syntaxes[JPEG2000] >= 3


def test_studies_are_striped(
    archive: DemoArchive, readable: list[ExpectedOutcome], headers: dict[Path, pydicom.Dataset]
) -> None:
    folders_by_study: dict[str, set[Path]] = collections.defaultdict(set)
    studies_by_folder: dict[Path, set[str]] = collections.defaultdict(set)
    for outcome in readable:
        path = path_of(archive, outcome)
        study_uid = str(headers[path].StudyInstanceUID)
        folders_by_study[study_uid].add(path.parent)
        studies_by_folder[path.parent].add(study_uid)

    assert len(folders_by_study) == 6
    assert max(len(folders) for folders in folders_by_study.values()) >= 3
    assert max(len(studies) for studies in studies_by_folder.values()) >= 2


def test_query_returns_row_per_registered_uid(
    archive: DemoArchive, readable: list[ExpectedOutcome], legacy_rows: dict[str, dict[str, Any]]
) -> None:
    uids = sorted({outcome.sop_instance_uid for outcome in readable})
    orphan_uids = {outcome.sop_instance_uid for outcome in outcomes_with_reason(archive, "orphan")}
    rows = run_reconciliation_query(archive, uids)
    row_uids = [row["SOPInstanceUID"] for row in rows]

    assert len(row_uids) == len(set(row_uids))
    assert set(row_uids) == set(uids) - orphan_uids
    for row in rows:
        assert set(row) == QUERY_COLUMNS


def test_orphans_have_no_row(
    archive: DemoArchive, legacy_rows: dict[str, dict[str, Any]]
) -> None:
    orphans = outcomes_with_reason(archive, "orphan")

    assert len(orphans) >= 2
    for outcome in orphans:
        assert outcome.sop_instance_uid not in legacy_rows


def test_one_duplicate_pair(
    archive: DemoArchive, readable: list[ExpectedOutcome], legacy_rows: dict[str, dict[str, Any]]
) -> None:
    by_uid: dict[str, list[ExpectedOutcome]] = collections.defaultdict(list)
    for outcome in readable:
        by_uid[outcome.sop_instance_uid].append(outcome)
    pairs = [outcomes for outcomes in by_uid.values() if len(outcomes) > 1]

    assert len(pairs) == 1
    assert len(pairs[0]) == 2
    duplicate = [outcome for outcome in pairs[0] if outcome.reason == "duplicate"]
    referenced = [outcome for outcome in pairs[0] if outcome.reason != "duplicate"]
    assert len(duplicate) == 1
    assert len(referenced) == 1
    assert referenced[0].destination == "main"
    file_path = legacy_rows[referenced[0].sop_instance_uid]["FilePath"]
    assert location_of(archive, file_path) == path_of(archive, referenced[0])
    assert outcomes_with_reason(archive, "duplicate") == duplicate


def test_superseded_row_names_missing_file(
    archive: DemoArchive, legacy_rows: dict[str, dict[str, Any]]
) -> None:
    superseded = outcomes_with_reason(archive, "superseded")

    assert superseded
    for outcome in superseded:
        named = location_of(archive, legacy_rows[outcome.sop_instance_uid]["FilePath"])
        assert named != path_of(archive, outcome)
        assert not named.exists()


def test_file_paths_use_legacy_form(
    archive: DemoArchive, legacy_rows: dict[str, dict[str, Any]]
) -> None:
    prefixes = tuple(archive.legacy_path_prefixes.values())
    for row in legacy_rows.values():
        assert row["FilePath"].startswith(prefixes)
        assert "/" not in row["FilePath"]


def test_sent_files_reference_themselves(
    archive: DemoArchive, legacy_rows: dict[str, dict[str, Any]]
) -> None:
    for outcome in archive.expected:
        if outcome.destination in ("main", "nonpixel"):
            file_path = legacy_rows[outcome.sop_instance_uid]["FilePath"]
            assert location_of(archive, file_path) == path_of(archive, outcome)


def test_every_outcome_kind_occurs(archive: DemoArchive) -> None:
    kinds = {(outcome.destination, outcome.reason) for outcome in archive.expected}

    assert kinds == {
        ("main", None),
        ("nonpixel", None),
        ("unreadable", None),
        ("sinbin", "orphan"),
        ("sinbin", "duplicate"),
        ("sinbin", "superseded"),
        ("sinbin", "excluded_study"),
        ("sinbin", "unsupported_sop_class"),
    }


def test_corrections_match_db_and_header(
    archive: DemoArchive,
    headers: dict[Path, pydicom.Dataset],
    legacy_rows: dict[str, dict[str, Any]],
) -> None:
    for outcome in archive.expected:
        if outcome.destination not in ("main", "nonpixel"):
            assert outcome.corrections == {}
            continue
        header = headers[path_of(archive, outcome)]
        row = legacy_rows[outcome.sop_instance_uid]
        differences = {
            keyword: row[keyword]
            for keyword in RECONCILED_KEYWORDS
            if row[keyword] != str(header.get(keyword, ""))
        }

        assert outcome.corrections == differences, outcome.rel_path


def test_corrections_cover_demographics(archive: DemoArchive) -> None:
    corrected = collections.Counter(
        keyword for outcome in archive.expected for keyword in outcome.corrections
    )

    keywords = ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber")
    for keyword in keywords:
        assert corrected[keyword] >= 1, keyword


def test_non_ascii_name_needs_charset(
    archive: DemoArchive, headers: dict[Path, pydicom.Dataset]
) -> None:
    corrected = [
        outcome
        for outcome in archive.expected
        if not outcome.corrections.get("PatientName", "").isascii()
    ]

    assert corrected
    assert {outcome.corrections["PatientName"] for outcome in corrected} == {"MÜLLER^JÖRG"}
    for outcome in corrected:
        charset = headers[path_of(archive, outcome)].get("SpecificCharacterSet")
        assert charset in (None, "", "ISO_IR 100")


def test_merged_study_points_to_existing_study(
    archive: DemoArchive, headers: dict[Path, pydicom.Dataset]
) -> None:
    header_study_uids = {str(header.StudyInstanceUID) for header in headers.values()}
    merged = [outcome for outcome in archive.expected if "StudyInstanceUID" in outcome.corrections]

    assert merged
    for outcome in merged:
        header = headers[path_of(archive, outcome)]
        assert outcome.corrections["StudyInstanceUID"] != header.StudyInstanceUID
        assert outcome.corrections["StudyInstanceUID"] in header_study_uids


def test_excluded_study_instances_have_rows(
    archive: DemoArchive,
    readable: list[ExpectedOutcome],
    headers: dict[Path, pydicom.Dataset],
    legacy_rows: dict[str, dict[str, Any]],
) -> None:
    lines = archive.exclusion_list.read_text(encoding="utf-8").splitlines()
    excluded_uids = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    in_excluded_study = [
        outcome
        for outcome in readable
        if headers[path_of(archive, outcome)].StudyInstanceUID in excluded_uids
    ]

    assert len(excluded_uids) == 1
    assert in_excluded_study
    assert in_excluded_study == outcomes_with_reason(archive, "excluded_study")
    for outcome in in_excluded_study:
        assert outcome.sop_instance_uid in legacy_rows


def test_unsupported_sop_class_outcome(
    archive: DemoArchive, readable: list[ExpectedOutcome], headers: dict[Path, pydicom.Dataset]
) -> None:
    for outcome in readable:
        sop_class = headers[path_of(archive, outcome)].SOPClassUID
        if outcome.reason == "unsupported_sop_class":
            assert sop_class in archive.unsupported_sop_classes
        elif outcome.destination in ("main", "nonpixel"):
            assert sop_class not in archive.unsupported_sop_classes


def test_destination_follows_pixel_data(archive: DemoArchive) -> None:
    for outcome in archive.expected:
        if outcome.destination in ("main", "nonpixel"):
            dataset = pydicom.dcmread(path_of(archive, outcome))
            assert ("PixelData" in dataset) == (outcome.destination == "main"), outcome.rel_path

    assert len([outcome for outcome in archive.expected if outcome.destination == "nonpixel"]) >= 4


def test_unreadable_files_fail_to_read(archive: DemoArchive) -> None:
    unreadable = [outcome for outcome in archive.expected if outcome.destination == "unreadable"]
    sizes = sorted(path_of(archive, outcome).stat().st_size for outcome in unreadable)

    assert len(unreadable) == 2
    assert sizes[0] == 0
    assert sizes[1] > 0
    for outcome in unreadable:
        assert outcome.rel_path.endswith(".dcm")
        assert outcome.sop_instance_uid == ""
        assert outcome.transfer_syntax is None
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(path_of(archive, outcome))


def test_build_is_deterministic(tmp_path: Path, archive: DemoArchive) -> None:
    again = build_demo_archive(tmp_path / "again")

    assert again.expected == archive.expected
    assert again.exclusion_list.read_bytes() == archive.exclusion_list.read_bytes()
    assert run_reconciliation_query(again, ["unused"]) == []
    for outcome in archive.expected:
        assert path_of(again, outcome).read_bytes() == path_of(archive, outcome).read_bytes()


def test_other_seed_changes_uids(tmp_path: Path, archive: DemoArchive) -> None:
    other = build_demo_archive(tmp_path / "other", seed=8)
    uids = {outcome.sop_instance_uid for outcome in archive.expected} - {""}
    other_uids = {outcome.sop_instance_uid for outcome in other.expected} - {""}

    assert uids.isdisjoint(other_uids)


def test_extra_studies_agree_with_db(tmp_path: Path, archive: DemoArchive) -> None:
    bigger = build_demo_archive(tmp_path / "bigger", studies=8)
    copies = [outcome for outcome in archive.expected if outcome.sop_instance_uid]
    bigger_copies = [outcome for outcome in bigger.expected if outcome.sop_instance_uid]
    added = [outcome for outcome in bigger_copies if outcome not in copies]

    assert all(outcome in bigger_copies for outcome in copies)
    assert len(added) >= 4
    for outcome in added:
        assert outcome.destination == "main"
        assert outcome.corrections == {}


def test_too_few_studies_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 6"):
        build_demo_archive(tmp_path / "small", studies=5)


def test_non_empty_base_rejected(tmp_path: Path) -> None:
    (tmp_path / "leftover.txt").write_text("x", encoding="utf-8")

    with pytest.raises(FileExistsError):
        build_demo_archive(tmp_path)
