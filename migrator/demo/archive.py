"""Build a demo legacy PACS archive from the sample DICOM files of pydicom and pydicom-data.

The archive has three storage roots, a legacy SQLite database and an exclusion list.
Each DICOM file is a copy of a real sample with new UIDs and fictitious demographics.
Pixel Data is never decoded, so every copy keeps the sample's transfer syntax and Pixel
Data bytes.

The legacy database disagrees with the file headers the way real archives do. It has
changed demographics, a merged study, a superseded file, orphans, a duplicate, an
excluded study, an unsupported SOP class and two unreadable files.
``DemoArchive.expected`` states where the migrator must put each file.

The expected outcomes follow the migrator's order of precedence:

1. unreadable files;
2. reconciliation against the legacy database: orphan, then duplicate, then superseded;
3. the exclusion list;
4. unsupported SOP classes;
5. objects without pixel data ("nonpixel") versus images ("main").
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import random
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pydicom.data
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ImplicitVRLittleEndian,
    TwelveLeadECGWaveformStorage,
    generate_uid,
)

logger = logging.getLogger(__name__)

ROOT_NAMES: tuple[str, ...] = ("root1", "root2", "root3")

# The legacy PACS stores each file as a Windows UNC path, which is a per-root share
# prefix followed by the path relative to the root with backslashes.
LEGACY_PATH_PREFIXES: dict[str, str] = {name: f"\\\\legacy-pacs\\{name}\\" for name in ROOT_NAMES}

# Number of folders per storage day that the legacy PACS stripes a study's instances over.
FOLDERS_PER_DAY = 4

# Number of studies that _scenario_studies() returns, one per scenario group.
MIN_STUDIES = 6

UNSUPPORTED_SOP_CLASSES: tuple[str, ...] = (str(TwelveLeadECGWaveformStorage),)

# Header keywords the reconciliation query returns and the legacy database may correct.
RECONCILED_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "AccessionNumber",
)

MAIN = "main"
NONPIXEL = "nonpixel"
SINBIN = "sinbin"
UNREADABLE = "unreadable"

ORPHAN = "orphan"
SUPERSEDED = "superseded"
DUPLICATE = "duplicate"
UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
EXCLUDED_STUDY = "excluded_study"

# The migrator binds ``uids`` as an SQLAlchemy expanding bind parameter.
RECONCILIATION_QUERY = """\
SELECT i.sop_iuid AS SOPInstanceUID,
       p.pat_id AS PatientID,
       p.pat_name AS PatientName,
       p.pat_birthdate AS PatientBirthDate,
       p.pat_sex AS PatientSex,
       st.study_iuid AS StudyInstanceUID,
       st.accession_no AS AccessionNumber,
       i.file_path AS FilePath
FROM instance AS i
JOIN series AS se ON se.pk = i.series_fk
JOIN study AS st ON st.pk = se.study_fk
JOIN patient AS p ON p.pk = st.patient_fk
WHERE i.sop_iuid IN :uids"""

_LEGACY_SCHEMA = """\
CREATE TABLE patient (
    pk INTEGER PRIMARY KEY,
    pat_id TEXT NOT NULL UNIQUE,
    pat_name TEXT NOT NULL,
    pat_birthdate TEXT,
    pat_sex TEXT
);
CREATE TABLE study (
    pk INTEGER PRIMARY KEY,
    patient_fk INTEGER NOT NULL REFERENCES patient (pk),
    study_iuid TEXT NOT NULL UNIQUE,
    accession_no TEXT,
    study_date TEXT,
    study_desc TEXT
);
CREATE TABLE series (
    pk INTEGER PRIMARY KEY,
    study_fk INTEGER NOT NULL REFERENCES study (pk),
    series_iuid TEXT NOT NULL UNIQUE,
    series_no INTEGER,
    modality TEXT
);
CREATE TABLE instance (
    pk INTEGER PRIMARY KEY,
    series_fk INTEGER NOT NULL REFERENCES series (pk),
    sop_iuid TEXT NOT NULL UNIQUE,
    sop_cuid TEXT NOT NULL,
    inst_no INTEGER,
    file_path TEXT NOT NULL
);
CREATE INDEX study_patient_fk ON study (patient_fk);
CREATE INDEX series_study_fk ON series (study_fk);
CREATE INDEX instance_series_fk ON instance (series_fk);
"""

_UID_NAMESPACE = "pacs-migrator-demo"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Dates that a copy sets to its StudyDate when the sample has them.
_ALIGNED_DATE_KEYWORDS = ("SeriesDate", "AcquisitionDate", "ContentDate")

# Identifying elements of the sample's original patient that would contradict the
# fictitious demographics.
_STALE_PATIENT_KEYWORDS = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientInstitutionResidence",
)

_EXTRA_GIVEN_NAMES = ("FRANK", "GRACE", "HEIDI", "IVAN", "JUDY", "KARL", "LENA", "OSCAR", "PEGGY")


@dataclass(frozen=True)
class ExpectedOutcome:
    """Destination that the migrator must choose for one file of the demo archive.

    ``sop_instance_uid`` is empty and ``transfer_syntax`` is None for unreadable files.
    ``corrections`` maps each keyword whose legacy database value differs from the header
    to the value the destination must hold. It is filled only for files that are sent
    ("main" and "nonpixel") and is empty for "sinbin" and "unreadable".
    """

    root: str
    rel_path: str
    sop_instance_uid: str
    destination: str
    reason: str | None
    corrections: dict[str, str]
    transfer_syntax: str | None


@dataclass(frozen=True)
class DemoArchive:
    """A demo legacy archive on disk and the outcome expected for each of its files."""

    base: Path
    roots: dict[str, Path]
    legacy_db: Path
    legacy_url: str
    reconciliation_query: str
    legacy_path_prefixes: dict[str, str]
    exclusion_list: Path
    unsupported_sop_classes: list[str]
    expected: list[ExpectedOutcome]


@dataclass(frozen=True)
class LegacyRow:
    """Values that the legacy database stores for one SOP instance.

    ``values`` maps each of RECONCILED_KEYWORDS to the database value. ``root`` and
    ``rel_path`` give the file that the row's file_path names, which may not exist.
    """

    values: dict[str, str]
    root: str
    rel_path: str


@dataclass(frozen=True)
class PlannedCopy:
    """A re-identified copy of a sample file and the legacy database row for its instance.

    ``header`` maps each of RECONCILED_KEYWORDS to the value written into the copy.
    ``legacy`` is None for an orphan, which has no row in the legacy database.
    """

    root: str
    rel_path: str
    source: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    has_pixel_data: bool
    modality: str
    series_instance_uid: str
    series_number: int
    instance_number: int
    study_date: str
    study_description: str
    header: dict[str, str]
    legacy: LegacyRow | None


@dataclass(frozen=True)
class _UnreadableFile:
    root: str
    rel_path: str
    content: bytes


@dataclass(frozen=True)
class _SampleInfo:
    path: Path
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    has_pixel_data: bool


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class _SeriesSpec:
    """A series made of ``count`` copies of the first sample in ``candidates`` that exists.

    Positions count from 0 within the series. A stray copy is a second file with the same
    SOP Instance UID at the same relative path on another root, which the legacy database
    does not reference. When no candidate exists, a series that is required or carries a
    scenario raises FileNotFoundError, and any other series is skipped.
    """

    candidates: tuple[str, ...]
    count: int
    orphans: frozenset[int] = frozenset()
    superseded: frozenset[int] = frozenset()
    stray_copies: tuple[tuple[int, str], ...] = ()
    required: bool = False

    @property
    def is_required(self) -> bool:
        return self.required or bool(self.orphans or self.superseded or self.stray_copies)


@dataclass(frozen=True)
class _StudySpec:
    """A study as the file headers hold it and as the legacy database stores it.

    ``merged_into`` is the index of the study that the legacy database moved all of this
    study's instances into. The database has no study row for a merged study.
    """

    description: str
    root: str
    patient: _Patient
    accession_number: str
    series: tuple[_SeriesSpec, ...]
    legacy_patient: _Patient | None = None
    legacy_accession_number: str | None = None
    merged_into: int | None = None
    excluded: bool = False


@dataclass(frozen=True)
class _Plan:
    specs: list[_StudySpec]
    study_uids: list[str]
    dates: dict[str, str]
    copies: list[PlannedCopy]
    unreadable: list[_UnreadableFile]

    @property
    def excluded_study_uids(self) -> list[str]:
        return [uid for spec, uid in zip(self.specs, self.study_uids) if spec.excluded]


@functools.cache
def sample_directories() -> tuple[Path, ...]:
    """Return the folders with the sample files of pydicom and, if installed, pydicom-data."""
    directories = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        directories.append(Path(str(importlib.resources.files("data_store"))) / "data")
    except ModuleNotFoundError:
        logger.warning("pydicom-data is not installed, so only pydicom's samples are available")
    return tuple(directory for directory in directories if directory.is_dir())


def find_sample(name: str) -> Path | None:
    """Return the path of the sample file ``name``, or None if no sample folder has it.

    Unlike ``pydicom.data.get_testdata_file`` this never downloads anything.
    """
    for directory in sample_directories():
        path = directory / name
        if path.is_file():
            return path
    return None


def read_sample(path: Path) -> FileDataset:
    """Read a sample file, adding File Meta Information when the sample has none.

    pydicom 3.0's rtstruct.dcm is a bare Implicit VR Little Endian dataset without the
    preamble and File Meta Information. Such a file is read with ``force=True`` and gets a
    file meta group that names Implicit VR Little Endian.

    Raises
    ------
    ValueError
        If a file without File Meta Information is not an Implicit VR Little Endian
        dataset with a SOP Class UID.
    """
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        dataset = pydicom.dcmread(path, force=True)

    if dataset.original_encoding != (True, True) or "SOPClassUID" not in dataset:
        raise ValueError(
            f"Sample {path} is invalid because it has no File Meta Information and is not "
            "an Implicit VR Little Endian dataset with a SOP Class UID. Pick another sample."
        )
    file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta = file_meta
    return dataset


@functools.cache
def _inspect_sample(path: Path) -> _SampleInfo:
    dataset = read_sample(path)
    return _SampleInfo(
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        transfer_syntax=str(dataset.file_meta.TransferSyntaxUID),
        modality=str(dataset.get("Modality", "OT")),
        has_pixel_data=any(keyword in dataset for keyword in _PIXEL_KEYWORDS),
    )


def _resolve_series_sample(series: _SeriesSpec) -> _SampleInfo | None:
    """Return the first candidate sample that exists, or None for an optional series.

    Raises
    ------
    FileNotFoundError
        If no candidate exists and the series carries a scenario.
    """
    for name in series.candidates:
        path = find_sample(name)
        if path is not None:
            return _inspect_sample(path)

    names = ", ".join(series.candidates)
    if series.is_required:
        directories = ", ".join(map(str, sample_directories()))
        raise FileNotFoundError(
            f"None of the sample files {names} was found in {directories}. "
            "Install pydicom-data, which ships most of them."
        )
    logger.warning("Skipping a demo series because none of its sample files exist: %s", names)
    return None


def _make_uid(seed: int, *parts: object) -> str:
    """Return a UID that depends only on the seed and ``parts``."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), *map(str, parts)]))


class _FileNamer:
    """Generator of legacy-style file names (eight upper-case hex digits and ``.dcm``).

    One generator never returns the same name twice.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def next_name(self) -> str:
        while True:
            name = f"{self._rng.getrandbits(32):08X}.dcm"
            if name not in self._used:
                self._used.add(name)
                return name


def _storage_dates(rng: random.Random) -> dict[str, str]:
    """Pick the storage day (YYYYMMDD) of each root, which is also its studies' StudyDate."""
    first_day = date(2019, 1, 7)
    return {
        root: (first_day + timedelta(days=rng.randrange(0, 365))).strftime("%Y%m%d")
        for root in ROOT_NAMES
    }


def _day_folder(study_date: str) -> str:
    return f"{study_date[:4]}/{study_date[4:6]}/{study_date[6:]}"


def _accession_number(rng: random.Random) -> str:
    return f"A{rng.randrange(10**7, 10**8)}"


def _scenario_studies(rng: random.Random) -> list[_StudySpec]:
    """Return the six studies that carry the archive's scenarios."""
    alice = _Patient("DEMO0001", "DEMO^ALICE", "19580314", "F")
    jorg = _Patient("DEMO0002", "MULLER^JORG", "19670921", "M")
    carol = _Patient("DEMO0003", "DEMO^CAROL", "19720606", "F")
    phantom = _Patient("DEMO0004", "DEMO^QA PHANTOM", "19700101", "O")
    eve = _Patient("DEMO0005", "DEMO^EVE", "19800101", "F")

    ct_rt = _StudySpec(
        description="CT THORAX AND RT PLANNING",
        root="root1",
        patient=alice,
        accession_number=_accession_number(rng),
        # The registration desk completed the given names after the scan.
        legacy_patient=_Patient("DEMO0001", "DEMO^ALICE MARIE", "19580314", "F"),
        series=(
            _SeriesSpec(("693_J2KR.dcm",), 4),
            _SeriesSpec(("693_J2KI.dcm",), 2),
            _SeriesSpec(("CT_small.dcm",), 3, orphans=frozenset({1})),
            _SeriesSpec(("rtstruct.dcm",), 1, required=True),
            _SeriesSpec(("rtplan.dcm",), 1, required=True),
        ),
    )
    # The MR console has no umlauts, and the header has no Specific Character Set or
    # ISO_IR 100, so sending the corrected name requires a suitable character set.
    mr = _StudySpec(
        description="MR HEAD",
        root="root2",
        patient=jorg,
        accession_number=_accession_number(rng),
        legacy_patient=_Patient("DEMO0002", "MÜLLER^JÖRG", "19670921", "M"),
        legacy_accession_number=_accession_number(rng),
        series=(
            _SeriesSpec(("MR_small_jp2klossless.dcm",), 3),
            _SeriesSpec(("MR_small.dcm",), 2),
            _SeriesSpec(("MR_small_implicit.dcm",), 1),
            _SeriesSpec(("MR_small_RLE.dcm",), 2),
            _SeriesSpec(("MR2_J2KR.dcm",), 2),
            _SeriesSpec(("emri_small_jpeg_2k_lossless.dcm",), 1),
            _SeriesSpec(("test-SR.dcm",), 1, required=True),
        ),
    )
    # An unscheduled repeat that the PACS administrator merged into the next study. The
    # merge also rewrote one instance to a new path that no longer exists.
    merged = _StudySpec(
        description="CR CHEST UNSCHEDULED",
        root="root3",
        patient=carol,
        accession_number=_accession_number(rng),
        merged_into=3,
        series=(
            _SeriesSpec(("RG3_J2KI.dcm", "693_J2KI.dcm"), 2, superseded=frozenset({1})),
            _SeriesSpec(("RG3_J2KR.dcm",), 1),
        ),
    )
    # The modality dropped a digit of the Patient ID, which the database has corrected.
    # A storage move left a second copy of one instance on root1.
    merge_target = _StudySpec(
        description="CR CHEST",
        root="root3",
        patient=_Patient("DEMO003", "DEMO^CAROL", "19720606", "F"),
        accession_number=_accession_number(rng),
        legacy_patient=carol,
        series=(
            _SeriesSpec(("RG1_J2KR.dcm", "RG3_J2KR.dcm"), 1),
            _SeriesSpec(
                ("RG3_J2KR.dcm", "MR_small_jp2klossless.dcm"), 2, stray_copies=((0, "root1"),)
            ),
            _SeriesSpec(("US1_J2KR.dcm", "examples_jpeg2k.dcm"), 2, orphans=frozenset({1})),
        ),
    )
    excluded = _StudySpec(
        description="QA PHANTOM",
        root="root1",
        patient=phantom,
        accession_number=_accession_number(rng),
        excluded=True,
        series=(
            _SeriesSpec(("JPEG2000.dcm",), 2, required=True),
            _SeriesSpec(("JPEG-lossy.dcm",), 1),
            _SeriesSpec(("examples_ybr_color.dcm",), 1),
            _SeriesSpec(("OBXXXX1A_rle.dcm",), 2),
        ),
    )
    # The header has a placeholder birth date that the database has corrected.
    ecg = _StudySpec(
        description="RESTING ECG",
        root="root2",
        patient=eve,
        accession_number=_accession_number(rng),
        legacy_patient=_Patient("DEMO0005", "DEMO^EVE", "19800412", "F"),
        series=(
            _SeriesSpec(("waveform_ecg.dcm",), 1, required=True),
            _SeriesSpec(("SC_rgb_jpeg_dcmtk.dcm",), 1),
            _SeriesSpec(("reportsi.dcm",), 1, required=True),
        ),
    )
    return [ct_rt, mr, merged, merge_target, excluded, ecg]


def _extra_studies(count: int, rng: random.Random) -> list[_StudySpec]:
    """Return ``count`` studies whose headers and database rows agree."""
    templates = (
        ("CT ABDOMEN", (_SeriesSpec(("CT_small.dcm",), 2), _SeriesSpec(("693_J2KI.dcm",), 1))),
        ("MR KNEE", (_SeriesSpec(("MR_small.dcm",), 2), _SeriesSpec(("MR_small_RLE.dcm",), 1))),
        ("US ABDOMEN", (_SeriesSpec(("US1_J2KI.dcm",), 1), _SeriesSpec(("OBXXXX1A_rle.dcm",), 2))),
    )
    studies = []
    for offset in range(count):
        index = MIN_STUDIES + offset
        description, series = templates[offset % len(templates)]
        given_name = _EXTRA_GIVEN_NAMES[offset % len(_EXTRA_GIVEN_NAMES)]
        birth_date = date(rng.randrange(1930, 2000), rng.randrange(1, 13), rng.randrange(1, 29))
        patient = _Patient(
            f"DEMO{index + 1:04d}",
            f"DEMO^{given_name}",
            birth_date.strftime("%Y%m%d"),
            rng.choice("FM"),
        )
        studies.append(
            _StudySpec(
                description=description,
                root=ROOT_NAMES[index % len(ROOT_NAMES)],
                patient=patient,
                accession_number=_accession_number(rng),
                series=series,
            )
        )
    return studies


def _header_values(spec: _StudySpec, study_uid: str) -> dict[str, str]:
    return {
        "PatientID": spec.patient.patient_id,
        "PatientName": spec.patient.name,
        "PatientBirthDate": spec.patient.birth_date,
        "PatientSex": spec.patient.sex,
        "StudyInstanceUID": study_uid,
        "AccessionNumber": spec.accession_number,
    }


def _legacy_values(index: int, specs: list[_StudySpec], study_uids: list[str]) -> dict[str, str]:
    """Return the database values for the instances of study ``index``, following a merge."""
    merged_into = specs[index].merged_into
    target = merged_into if merged_into is not None else index
    spec = specs[target]
    patient = spec.legacy_patient or spec.patient
    return {
        "PatientID": patient.patient_id,
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
        "StudyInstanceUID": study_uids[target],
        "AccessionNumber": spec.legacy_accession_number or spec.accession_number,
    }


def _plan_study(
    index: int,
    specs: list[_StudySpec],
    study_uids: list[str],
    dates: dict[str, str],
    namer: _FileNamer,
    seed: int,
) -> list[PlannedCopy]:
    """Plan the copies of one study, striping instance i into folder i % FOLDERS_PER_DAY."""
    spec = specs[index]
    study_date = dates[spec.root]
    header = _header_values(spec, study_uids[index])
    legacy = _legacy_values(index, specs, study_uids)
    copies: list[PlannedCopy] = []
    instance_index = 0

    for series_index, series in enumerate(spec.series):
        sample = _resolve_series_sample(series)
        if sample is None:
            continue
        series_uid = _make_uid(seed, "series", index, series_index)
        for position in range(series.count):
            folder = f"F{instance_index % FOLDERS_PER_DAY:03d}"
            name = namer.next_name()
            rel_path = f"{_day_folder(study_date)}/{folder}/{name}"
            legacy_path = rel_path
            if position in series.superseded:
                legacy_path = f"{_day_folder(study_date)}/MERGED/{name}"
            row = None if position in series.orphans else LegacyRow(legacy, spec.root, legacy_path)
            copy = PlannedCopy(
                root=spec.root,
                rel_path=rel_path,
                source=sample.path,
                sop_instance_uid=_make_uid(seed, "instance", index, instance_index),
                sop_class_uid=sample.sop_class_uid,
                transfer_syntax=sample.transfer_syntax,
                has_pixel_data=sample.has_pixel_data,
                modality=sample.modality,
                series_instance_uid=series_uid,
                series_number=series_index + 1,
                instance_number=position + 1,
                study_date=study_date,
                study_description=spec.description,
                header=header,
                legacy=row,
            )
            copies.append(copy)
            copies.extend(_stray_copies(copy, series, position))
            instance_index += 1

    if not copies:
        raise FileNotFoundError(f"No sample file of demo study {index} ({spec.description}) exists")
    return copies


def _stray_copies(copy: PlannedCopy, series: _SeriesSpec, position: int) -> list[PlannedCopy]:
    """Return the unreferenced copies of ``copy`` on other roots at the same relative path."""
    return [
        dataclasses.replace(copy, root=root)
        for stray_position, root in series.stray_copies
        if stray_position == position
    ]


def _plan_unreadable_files(dates: dict[str, str], namer: _FileNamer) -> list[_UnreadableFile]:
    """Plan a zero-byte ``.dcm`` file and a text file with a ``.dcm`` name."""
    empty = _UnreadableFile("root2", f"{_day_folder(dates['root2'])}/F001/{namer.next_name()}", b"")
    text = _UnreadableFile(
        "root3",
        f"{_day_folder(dates['root3'])}/F002/{namer.next_name()}",
        b"Legacy PACS export log\r\nExport of job 4711 failed: disk full\r\n",
    )
    return [empty, text]


def _plan_archive(studies: int, seed: int) -> _Plan:
    if studies < MIN_STUDIES:
        raise ValueError(
            f"studies must be at least {MIN_STUDIES}, one per demo scenario, got {studies}"
        )
    rng = random.Random(seed)
    dates = _storage_dates(rng)
    specs = _scenario_studies(rng) + _extra_studies(studies - MIN_STUDIES, rng)
    study_uids = [_make_uid(seed, "study", index) for index in range(len(specs))]
    # A separate generator keeps the file names of the scenario studies independent of
    # the number of extra studies.
    namer = _FileNamer(random.Random(f"{_UID_NAMESPACE}/file-names/{seed}"))

    copies: list[PlannedCopy] = []
    for index in range(len(specs)):
        copies.extend(_plan_study(index, specs, study_uids, dates, namer, seed))
    unreadable = _plan_unreadable_files(dates, namer)
    return _Plan(specs, study_uids, dates, copies, unreadable)


def plan_demo_copies(studies: int = 6, seed: int = 7) -> list[PlannedCopy]:
    """Return the DICOM copies that ``build_demo_archive`` writes for the same arguments.

    Nothing is written. Tests use this to find the sample each copy came from.
    """
    return _plan_archive(studies, seed).copies


def _write_copy(copy: PlannedCopy, roots: dict[str, Path]) -> None:
    """Write a re-identified copy of the sample without decoding its Pixel Data."""
    dataset = read_sample(copy.source)

    dataset.StudyInstanceUID = copy.header["StudyInstanceUID"]
    dataset.SeriesInstanceUID = copy.series_instance_uid
    dataset.SOPInstanceUID = copy.sop_instance_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = UID(copy.sop_instance_uid)

    dataset.PatientID = copy.header["PatientID"]
    dataset.PatientName = copy.header["PatientName"]
    dataset.PatientBirthDate = copy.header["PatientBirthDate"]
    dataset.PatientSex = copy.header["PatientSex"]
    dataset.AccessionNumber = copy.header["AccessionNumber"]
    for keyword in _STALE_PATIENT_KEYWORDS:
        if keyword in dataset:
            delattr(dataset, keyword)

    dataset.StudyDate = copy.study_date
    for keyword in _ALIGNED_DATE_KEYWORDS:
        if keyword in dataset:
            setattr(dataset, keyword, copy.study_date)
    dataset.StudyDescription = copy.study_description
    dataset.SeriesNumber = copy.series_number
    dataset.InstanceNumber = copy.instance_number

    target = roots[copy.root] / copy.rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    # The file meta keeps the sample's Transfer Syntax UID, and the encapsulated Pixel
    # Data is written back as the bytes that were read.
    dataset.save_as(target, enforce_file_format=True)


def _write_unreadable(unreadable: _UnreadableFile, roots: dict[str, Path]) -> None:
    target = roots[unreadable.root] / unreadable.rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(unreadable.content)


def legacy_file_path(root: str, rel_path: str) -> str:
    """Return the legacy database's file_path for a file, in Windows UNC form."""
    return LEGACY_PATH_PREFIXES[root] + rel_path.replace("/", "\\")


def _insert_patients_and_studies(connection: sqlite3.Connection, plan: _Plan) -> dict[str, int]:
    """Insert the patient and study rows of every unmerged study and return study pks by UID."""
    patient_pks: dict[str, int] = {}
    study_pks: dict[str, int] = {}
    for spec, study_uid in zip(plan.specs, plan.study_uids):
        if spec.merged_into is not None:
            continue
        patient = spec.legacy_patient or spec.patient
        if patient.patient_id not in patient_pks:
            cursor = connection.execute(
                "INSERT INTO patient (pat_id, pat_name, pat_birthdate, pat_sex)"
                " VALUES (?, ?, ?, ?)",
                (patient.patient_id, patient.name, patient.birth_date, patient.sex),
            )
            patient_pks[patient.patient_id] = _inserted_pk(cursor)
        cursor = connection.execute(
            "INSERT INTO study (patient_fk, study_iuid, accession_no, study_date, study_desc)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                patient_pks[patient.patient_id],
                study_uid,
                spec.legacy_accession_number or spec.accession_number,
                plan.dates[spec.root],
                spec.description,
            ),
        )
        study_pks[study_uid] = _inserted_pk(cursor)
    return study_pks


def _insert_series_and_instances(
    connection: sqlite3.Connection, copies: list[PlannedCopy], study_pks: dict[str, int]
) -> None:
    """Insert one instance row per SOP Instance UID with a legacy row, and its series."""
    series_pks: dict[str, int] = {}
    inserted_uids: set[str] = set()
    for copy in copies:
        if copy.legacy is None or copy.sop_instance_uid in inserted_uids:
            continue
        if copy.series_instance_uid not in series_pks:
            cursor = connection.execute(
                "INSERT INTO series (study_fk, series_iuid, series_no, modality)"
                " VALUES (?, ?, ?, ?)",
                (
                    study_pks[copy.legacy.values["StudyInstanceUID"]],
                    copy.series_instance_uid,
                    copy.series_number,
                    copy.modality,
                ),
            )
            series_pks[copy.series_instance_uid] = _inserted_pk(cursor)
        connection.execute(
            "INSERT INTO instance (series_fk, sop_iuid, sop_cuid, inst_no, file_path)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                series_pks[copy.series_instance_uid],
                copy.sop_instance_uid,
                copy.sop_class_uid,
                copy.instance_number,
                legacy_file_path(copy.legacy.root, copy.legacy.rel_path),
            ),
        )
        inserted_uids.add(copy.sop_instance_uid)


def _inserted_pk(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:
        raise RuntimeError("SQLite returned no row id for an INSERT")
    return cursor.lastrowid


def _write_legacy_db(path: Path, plan: _Plan) -> None:
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(_LEGACY_SCHEMA)
        study_pks = _insert_patients_and_studies(connection, plan)
        _insert_series_and_instances(connection, plan.copies, study_pks)


def _write_exclusion_list(path: Path, study_uids: list[str]) -> None:
    lines = [
        "# Study Instance UIDs that the site excluded from the migration, one per line.",
        "# Lines starting with '#' are comments.",
        "",
        *study_uids,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sinbin_reason(
    copy: PlannedCopy, files_on_disk: set[tuple[str, str]], excluded_uids: set[str]
) -> str | None:
    """Return why the migrator must put a readable copy in the sinbin, or None."""
    if copy.legacy is None:
        return ORPHAN
    referenced = (copy.legacy.root, copy.legacy.rel_path)
    if referenced != (copy.root, copy.rel_path):
        return DUPLICATE if referenced in files_on_disk else SUPERSEDED
    study_uids = {copy.header["StudyInstanceUID"], copy.legacy.values["StudyInstanceUID"]}
    if study_uids & excluded_uids:
        return EXCLUDED_STUDY
    if copy.sop_class_uid in UNSUPPORTED_SOP_CLASSES:
        return UNSUPPORTED_SOP_CLASS
    return None


def _expected_for_copy(
    copy: PlannedCopy, files_on_disk: set[tuple[str, str]], excluded_uids: set[str]
) -> ExpectedOutcome:
    reason = _sinbin_reason(copy, files_on_disk, excluded_uids)
    corrections: dict[str, str] = {}
    if reason is not None:
        destination = SINBIN
    else:
        destination = MAIN if copy.has_pixel_data else NONPIXEL
        assert copy.legacy is not None  # Only orphans lack a row, and they have a reason.
        corrections = {
            keyword: copy.legacy.values[keyword]
            for keyword in RECONCILED_KEYWORDS
            if copy.legacy.values[keyword] != copy.header[keyword]
        }
    return ExpectedOutcome(
        root=copy.root,
        rel_path=copy.rel_path,
        sop_instance_uid=copy.sop_instance_uid,
        destination=destination,
        reason=reason,
        corrections=corrections,
        transfer_syntax=copy.transfer_syntax,
    )


def _expected_outcomes(plan: _Plan) -> list[ExpectedOutcome]:
    files_on_disk = {(copy.root, copy.rel_path) for copy in plan.copies}
    excluded_uids = set(plan.excluded_study_uids)
    outcomes = [_expected_for_copy(copy, files_on_disk, excluded_uids) for copy in plan.copies]
    outcomes.extend(
        ExpectedOutcome(item.root, item.rel_path, "", UNREADABLE, None, {}, None)
        for item in plan.unreadable
    )
    return sorted(outcomes, key=lambda outcome: (outcome.root, outcome.rel_path))


def _prepare_base(base: Path) -> None:
    if base.exists() and any(base.iterdir()):
        raise FileExistsError(
            f"Demo archive folder {base} is not empty. Pass a new or empty folder."
        )
    base.mkdir(parents=True, exist_ok=True)


def build_demo_archive(base: Path, studies: int = 6, seed: int = 7) -> DemoArchive:
    """Write the demo archive into ``base`` and return it with the expected outcomes.

    Parameters
    ----------
    base
        A new or empty folder. It receives root1, root2 and root3, the legacy SQLite
        database legacy-pacs.sqlite3 and exclusion-list.txt.
    studies
        Number of studies. The first six carry the scenarios and any further study has
        headers that agree with the database.
    seed
        Seed for UIDs, file names, dates and accession numbers. The same arguments give
        the same archive.

    Raises
    ------
    ValueError
        If ``studies`` is less than 6.
    FileExistsError
        If ``base`` is not empty.
    FileNotFoundError
        If a sample file that a scenario needs is missing.
    """
    plan = _plan_archive(studies, seed)
    base = base.resolve()
    _prepare_base(base)

    roots = {name: base / name for name in ROOT_NAMES}
    for root in roots.values():
        root.mkdir()
    for copy in plan.copies:
        _write_copy(copy, roots)
    for unreadable in plan.unreadable:
        _write_unreadable(unreadable, roots)

    legacy_db = base / "legacy-pacs.sqlite3"
    _write_legacy_db(legacy_db, plan)
    exclusion_list = base / "exclusion-list.txt"
    _write_exclusion_list(exclusion_list, plan.excluded_study_uids)

    expected = _expected_outcomes(plan)
    logger.info(
        "Built demo archive in %s with %d files in %d studies", base, len(expected), studies
    )
    return DemoArchive(
        base=base,
        roots=roots,
        legacy_db=legacy_db,
        legacy_url=f"sqlite:///{legacy_db}",
        reconciliation_query=RECONCILIATION_QUERY,
        legacy_path_prefixes=dict(LEGACY_PATH_PREFIXES),
        exclusion_list=exclusion_list,
        unsupported_sop_classes=list(UNSUPPORTED_SOP_CLASSES),
        expected=expected,
    )
