"""The synthetic archive generator: files, striping, scenarios, legacy database, manifest."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import warnings
from collections import Counter, defaultdict
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

from loadtest.archive import (
    ArchiveSpec,
    GeneratedArchive,
    Manifest,
    generate_archive,
    read_manifest,
)
from loadtest.archive.legacy_db import legacy_file_path
from migrator.config import load_settings
from migrator.demo.archive import RECONCILIATION_QUERY
from migrator.reconcile.outcome import PathMapper

SPEC = ArchiveSpec(instances=200, roots=3, seed=11, nonpixel_rate=0.05, mismatch_rate=0.05,
                   orphan_rate=0.03, duplicate_rate=0.03, merged_rate=0.2, instances_per_study=20)
FOLDER_PATTERN = re.compile(r"^\d{4}/\d{2}/\d{2}/F\d{3}$")
MIN_IMAGE_BYTES = 150_000
MAX_IMAGE_BYTES = 250_000


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> GeneratedArchive:
    return generate_archive(tmp_path_factory.mktemp("loadtest") / "archive", SPEC)


@pytest.fixture(scope="module")
def manifest(archive: GeneratedArchive) -> Manifest:
    return read_manifest(archive.folder)


def files_on_disk(archive: GeneratedArchive) -> set[tuple[str, str]]:
    return {(name, path.relative_to(root).as_posix())
            for name, root in archive.roots.items() for path in root.rglob("*") if path.is_file()}


def legacy_rows(archive: GeneratedArchive, uids: list[str]) -> dict[str, dict[str, str]]:
    """Run the demo's reconciliation query, as the migrator binds it, on the legacy database."""
    database = archive.folder / "legacy-pacs.sqlite3"
    query = RECONCILIATION_QUERY.replace(":uids", "(" + ",".join("?" * len(uids)) + ")")
    with closing(sqlite3.connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        return {row["SOPInstanceUID"]: dict(row) for row in connection.execute(query, uids)}


def test_manifest_lists_every_file(archive: GeneratedArchive, manifest: Manifest) -> None:
    listed = {(entry.root, entry.path) for entry in manifest.files}
    assert len(listed) == len(manifest.files)
    assert listed == files_on_disk(archive)
    assert manifest.summary["files"] == len(manifest.files)


def test_counts_follow_the_spec(manifest: Manifest) -> None:
    uids = {entry.sop_instance_uid for entry in manifest.files}
    assert len(uids) == SPEC.instances
    assert len(manifest.files) == SPEC.instances + round(SPEC.duplicate_rate * SPEC.instances)
    assert len(manifest.files) == SPEC.files
    assert set(manifest.summary["roots"]) == {"share01", "share02", "share03"}
    assert all(root["files"] > 0 for root in manifest.summary["roots"].values())


def test_file_sizes_in_range(archive: GeneratedArchive, manifest: Manifest) -> None:
    for entry in manifest.files:
        size = (archive.roots[entry.root] / entry.path).stat().st_size
        assert size == entry.size, entry.path
        if entry.kind == "CT":
            assert MIN_IMAGE_BYTES <= size <= MAX_IMAGE_BYTES, entry.path


def test_files_are_valid_part10(archive: GeneratedArchive, manifest: Manifest) -> None:
    """pydicom reads every file without a warning, with the manifest's UIDs and syntax."""
    for entry in manifest.files:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = pydicom.dcmread(archive.roots[entry.root] / entry.path)
        assert ds.preamble == b"\x00" * 128
        assert ds.file_meta.TransferSyntaxUID == entry.transfer_syntax
        assert ds.file_meta.MediaStorageSOPInstanceUID == entry.sop_instance_uid
        assert ds.file_meta.MediaStorageSOPClassUID == entry.sop_class_uid
        assert ds.SOPInstanceUID == entry.sop_instance_uid
        assert ds.SOPClassUID == entry.sop_class_uid
        assert ds.StudyInstanceUID == entry.study_instance_uid
        assert ds.SeriesInstanceUID == entry.series_instance_uid
        assert ds.Modality == entry.kind


def test_files_match_pydicom_encoding(archive: GeneratedArchive, manifest: Manifest) -> None:
    """Each template-written file is byte for byte what pydicom writes for the same dataset."""
    for kind in ("CT", "SR", "KO"):
        entry = next(entry for entry in manifest.files if entry.kind == kind)
        raw = (archive.roots[entry.root] / entry.path).read_bytes()
        buffer = io.BytesIO()
        dcmwrite(buffer, pydicom.dcmread(io.BytesIO(raw)), enforce_file_format=True)
        assert buffer.getvalue() == raw, kind


def test_ct_images_have_plausible_headers(archive: GeneratedArchive, manifest: Manifest) -> None:
    entries = [entry for entry in manifest.files if entry.kind == "CT"]
    # Series UID -> SOP Instance UID -> (Instance Number, Slice Location); both
    # files of a duplicate pair count once.
    positions: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    for entry in entries:
        ds = pydicom.dcmread(archive.roots[entry.root] / entry.path, stop_before_pixels=True)
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (512, 512, 16, 1)
        assert ds.PatientName
        assert ds.PatientID
        assert ds.PatientBirthDate
        assert ds.StudyDate == ds.SeriesDate
        assert float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation)
        positions[entry.series_instance_uid][entry.sop_instance_uid] = (
            int(ds.InstanceNumber), float(ds.SliceLocation))
    for series in positions.values():
        numbers = sorted(number for number, _ in series.values())
        locations = [location for _, location in sorted(series.values())]
        assert numbers == list(range(1, len(numbers) + 1))
        assert locations == sorted(locations, reverse=True)


def test_one_frame_decodes(archive: GeneratedArchive, manifest: Manifest) -> None:
    entry = next(entry for entry in manifest.files if entry.kind == "CT")
    ds = pydicom.dcmread(archive.roots[entry.root] / entry.path)
    pixels = ds.pixel_array  # decoded by pylibjpeg-openjpeg, the only JPEG 2000 plugin installed
    assert pixels.shape == (512, 512)
    assert str(pixels.dtype) == "int16"
    body = pixels[pixels != ds.PixelPaddingValue]
    assert body.size > 100_000
    assert body.std() > 100  # an image, not a constant


def test_nonpixel_objects_are_sr_and_kos(archive: GeneratedArchive, manifest: Manifest) -> None:
    nonpixel = [entry for entry in manifest.files if entry.kind != "CT"]
    uids = {entry.sop_instance_uid for entry in nonpixel}
    assert len(uids) == round(SPEC.nonpixel_rate * SPEC.instances)
    for entry in nonpixel:
        ds = pydicom.dcmread(archive.roots[entry.root] / entry.path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "PixelData" not in ds
        assert ds.ValueType == "CONTAINER"
        if entry.kind == "KO":
            evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == entry.study_instance_uid


def test_studies_striped_over_day_folders(manifest: Manifest) -> None:
    """Each study sits on one root and one day, spread over the day's folders in turn."""
    by_study: dict[str, list[str]] = defaultdict(list)
    roots_of_study: dict[str, set[str]] = defaultdict(set)
    for entry in manifest.files:
        folder = entry.path.rsplit("/", 1)[0]
        assert FOLDER_PATTERN.match(folder), entry.path
        by_study[entry.study_instance_uid].append(folder)
        roots_of_study[entry.study_instance_uid].add(entry.root)
    for study, folders in by_study.items():
        assert len(roots_of_study[study]) == 1
        assert len({folder[:10] for folder in folders}) == 1  # one storage day
        assert len(set(folders)) == min(len(folders), SPEC.folders_per_day)
        # A study's files, a duplicate's second file included, are a contiguous run of
        # the day's round-robin, so its folders differ by one file at most.
        per_folder = Counter(folders).values()
        assert max(per_folder) - min(per_folder) <= 1
    assert len({entry.root for entry in manifest.files}) == SPEC.roots


def test_rates_honoured(manifest: Manifest) -> None:
    scenarios = manifest.summary["scenario_instances"]
    assert scenarios["orphan"] == round(SPEC.orphan_rate * SPEC.instances)
    assert scenarios["duplicate"] == round(SPEC.duplicate_rate * SPEC.instances)
    assert scenarios["mismatch"] == round(SPEC.mismatch_rate * SPEC.instances)
    assert len(manifest.summary["merged_studies"]) == round(SPEC.merged_rate * manifest.summary["studies"])
    reasons = manifest.summary["expected"]["reason"]
    assert reasons["orphan"] == scenarios["orphan"]
    assert reasons["duplicate"] == scenarios["duplicate"]


def test_legacy_database_matches_manifest(archive: GeneratedArchive, manifest: Manifest) -> None:
    uids = sorted({entry.sop_instance_uid for entry in manifest.files})
    rows = legacy_rows(archive, uids)
    merged_into = {item["study_instance_uid"]: item["merged_into"]
                   for item in manifest.summary["merged_studies"]}
    for entry in manifest.files:
        row = rows.get(entry.sop_instance_uid)
        if "orphan" in entry.scenarios:
            assert row is None, entry.path
            continue
        assert row is not None, entry.path
        own_path = legacy_file_path(entry.root, entry.path)
        if entry.reason == "duplicate":
            assert row["FilePath"] != own_path
        else:
            assert row["FilePath"] == own_path
        assert row["StudyInstanceUID"] == merged_into.get(entry.study_instance_uid,
                                                          entry.study_instance_uid)
        for keyword, value in entry.corrections.items():
            assert row[keyword] == value, (entry.path, keyword)


def test_expected_corrections_match_headers(archive: GeneratedArchive, manifest: Manifest) -> None:
    """Every sent file's header differs from the database in exactly its expected corrections."""
    uids = sorted({entry.sop_instance_uid for entry in manifest.files})
    rows = legacy_rows(archive, uids)
    keywords = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                "AccessionNumber")
    corrected = Counter[str]()
    for entry in manifest.files:
        if entry.outcome != "sent":
            continue
        ds = pydicom.dcmread(archive.roots[entry.root] / entry.path, stop_before_pixels=True)
        differing = {keyword: rows[entry.sop_instance_uid][keyword] for keyword in keywords
                     if str(ds.get(keyword)) != rows[entry.sop_instance_uid][keyword]}
        assert differing == entry.corrections, entry.path
        corrected.update(entry.scenarios)
        if "mismatch" in entry.scenarios:
            assert set(entry.corrections) & {"PatientID", "PatientName", "PatientBirthDate"}
        if "merged" in entry.scenarios:
            assert "StudyInstanceUID" in entry.corrections
    assert corrected["mismatch"] > 0
    assert corrected["merged"] > 0


def test_expected_destinations(manifest: Manifest) -> None:
    for entry in manifest.files:
        if "orphan" in entry.scenarios:
            assert (entry.destination, entry.reason) == ("sinbin", "orphan")
        elif entry.reason == "duplicate":
            assert entry.destination == "sinbin"
            assert "duplicate" in entry.scenarios
        else:
            assert entry.destination == ("main" if entry.kind == "CT" else "nonpixel")
    pairs = Counter(entry.sop_instance_uid for entry in manifest.files if "duplicate" in entry.scenarios)
    assert set(pairs.values()) == {2}


def test_config_maps_legacy_paths_into_roots(archive: GeneratedArchive, manifest: Manifest) -> None:
    settings = load_settings(archive.folder / "migrator.toml")
    assert settings.legacy.query == RECONCILIATION_QUERY
    assert settings.state.url == f"sqlite:///{archive.folder / 'state.sqlite3'}"
    assert {root.name: root.path for root in settings.roots} == archive.roots
    assert {name: (d.host, d.port) for name, d in settings.destinations.items()} == {
        "main": ("127.0.0.1", 11112), "nonpixel": ("127.0.0.1", 11113)}
    mapper = PathMapper(settings.roots, settings.legacy.paths_case_insensitive)
    for entry in manifest.files[:50]:
        assert mapper.map(legacy_file_path(entry.root, entry.path)) == mapper.key(entry.root, entry.path)


def _digest(archive: GeneratedArchive) -> str:
    digest = hashlib.sha256()
    for root, path in sorted(files_on_disk(archive)):
        digest.update(f"{root}/{path}".encode())
        digest.update((archive.roots[root] / path).read_bytes())
    digest.update((archive.folder / "manifest-files.jsonl").read_bytes())
    digest.update((archive.folder / "manifest.json").read_bytes())
    return digest.hexdigest()


def test_same_seed_same_archive(archive: GeneratedArchive, tmp_path: Path) -> None:
    again = generate_archive(tmp_path / "again", SPEC)
    assert _digest(again) == _digest(archive)
    uids = sorted({entry.sop_instance_uid for entry in read_manifest(again.folder).files})
    assert legacy_rows(again, uids) == legacy_rows(archive, uids)


def test_other_seed_other_archive(archive: GeneratedArchive, tmp_path: Path) -> None:
    other = generate_archive(tmp_path / "other", ArchiveSpec(**{**vars(SPEC), "seed": 12}))
    assert _digest(other) != _digest(archive)
    uids = {entry.sop_instance_uid for entry in read_manifest(other.folder).files}
    assert not uids & {entry.sop_instance_uid for entry in read_manifest(archive.folder).files}


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("operator data")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_archive(tmp_path, SPEC)
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"instances": 0}, "instances must be at least 1"),
    ({"orphan_rate": 1.5}, "orphan_rate must be between 0 and 1"),
    ({"nonpixel_rate": 1.0}, "nonpixel_rate must be below 1"),
    ({"orphan_rate": 0.5, "mismatch_rate": 0.6}, "at most 1"),
    ({"roots": 100}, "roots must be at most 99"),
])
def test_invalid_spec_rejected(tmp_path: Path, changes: dict[str, float], message: str) -> None:
    spec = ArchiveSpec(**{**vars(SPEC), **changes})
    with pytest.raises(ValueError, match=message):
        generate_archive(tmp_path / "out", spec)
    assert not (tmp_path / "out").exists()
