"""The demo archive with collisions added: real DICOM files with edited UIDs, names and content."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from migrator.demo.archive import legacy_file_path
from tests.support import Migration, prepare_migration

#: Nothing listens on these ports; tests that send start their own SCPs.
ENDPOINTS = {"main": ("MAIN", 11112), "nonpixel": ("NP", 11113), "sinbin": ("SB", 11114)}

#: Demo files the scenarios copy (root, path): two CT images of one patient,
#: an MR image, a CR image, and the secondary capture of the ECG patient.
CT_A = ("root1", "2019/06/21/F000/0403A4D4.dcm")
CT_B = ("root1", "2019/06/21/F000/E4944FDD.dcm")
MR_C = ("root2", "2019/03/25/F000/0F92AF38.dcm")
CR_D = ("root3", "2019/07/28/F000/71889E06.dcm")
SC_EVE = ("root2", "2019/03/25/F001/B14A6D41.dcm")
#: The other files of the ECG patient: an ECG waveform and an SR.
EVE_OTHERS = [("root2", "2019/03/25/F000/86C08679.dcm"), ("root2", "2019/03/25/F002/244142EE.dcm")]
#: The demo's own byte-identical pair: a stray copy on root1 of a file on root3.
DEMO_DUPLICATE = [("root1", "2019/07/28/F001/AB7317C9.dcm"), ("root3", "2019/07/28/F001/AB7317C9.dcm")]

#: Names written into the copies; none of them may appear in logs or reports.
STRANGER = "SMITH^JANE"
MISSPELLED = "MILLER^GEORGE"
CAROL_VARIANT = "demo ^ carol^^"

File = tuple[str, str]


@dataclass
class CollisionArchive:
    migration: Migration
    #: An image and a copy with one UID, one study, one size and other bytes (the copy is newer).
    same_size: tuple[File, File]
    #: An image and a copy with one UID and one study whose sizes differ.
    other_size: tuple[File, File]
    #: An image and a byte-identical copy on another root.
    identical: tuple[File, File]
    #: An image and a copy of it under another Study Instance UID.
    two_studies: tuple[File, File]
    #: A new file with the ECG patient's Patient ID and another name; the legacy database has no row for it.
    stranger: File
    #: A new file with a misspelled name that the legacy database corrects.
    misspelled: File
    #: A new file whose name differs from its patient's only in case, spaces and empty components.
    carol_variant: File

    def path(self, file: File) -> Path:
        return self.migration.archive.roots[file[0]] / file[1]

    def uid(self, file: File) -> str:
        return str(pydicom.dcmread(self.path(file), stop_before_pixels=True).SOPInstanceUID)

    def eve_files(self) -> list[File]:
        return [SC_EVE, *EVE_OTHERS, self.stranger]


def _copy(archive_roots: dict[str, Path], source: File, target: File, **changes: object) -> None:
    ds = pydicom.dcmread(archive_roots[source[0]] / source[1])
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    path = archive_roots[target[0]] / target[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _add_legacy_row(legacy_db: Path, source_uid: str, uid: str, file: File) -> None:
    """Reference ``file`` in the legacy database, in the series of the instance ``source_uid``."""
    with closing(sqlite3.connect(legacy_db)) as connection, connection:
        series, sop_class = connection.execute(
            "SELECT series_fk, sop_cuid FROM instance WHERE sop_iuid = ?", (source_uid,)).fetchone()
        connection.execute(
            "INSERT INTO instance (series_fk, sop_iuid, sop_cuid, inst_no, file_path) VALUES (?, ?, ?, ?, ?)",
            (series, uid, sop_class, 99, legacy_file_path(file[0], file[1])))


def build_collision_archive(tmp_path: Path, state_url: str,
                            endpoints: dict[str, tuple[str, int]] | None = None) -> CollisionArchive:
    """Build the demo archive under ``tmp_path`` and add one file per collision scenario."""
    migration = prepare_migration(tmp_path, state_url, endpoints or ENDPOINTS)
    roots = migration.archive.roots
    archive = CollisionArchive(
        migration=migration,
        same_size=(CT_A, ("root1", "collide/content/same-size.dcm")),
        other_size=(CT_B, ("root1", "collide/content/other-size.dcm")),
        identical=(MR_C, ("root3", "collide/identical/copy.dcm")),
        two_studies=(CR_D, ("root3", "collide/study/old-study.dcm")),
        stranger=("root2", "collide/patient/stranger.dcm"),
        misspelled=("root2", "collide/patient/misspelled.dcm"),
        carol_variant=("root3", "collide/patient/carol.dcm"),
    )
    source_a = pydicom.dcmread(archive.path(CT_A), stop_before_pixels=True)
    # One digit for another keeps the size and changes the bytes.
    _copy(roots, CT_A, archive.same_size[1], InstanceNumber=7 if source_a.InstanceNumber != 7 else 8)
    old = archive.path(CT_A).stat().st_mtime_ns
    os.utime(archive.path(archive.same_size[1]), ns=(old + 60_000_000_000, old + 60_000_000_000))
    _copy(roots, CT_B, archive.other_size[1], ImageComments="rescanned after a transfer error")
    target = archive.path(archive.identical[1])
    target.parent.mkdir(parents=True)
    shutil.copy2(archive.path(MR_C), target)
    _copy(roots, CR_D, archive.two_studies[1], StudyInstanceUID=generate_uid())

    _copy(roots, SC_EVE, archive.stranger, SOPInstanceUID=generate_uid(), PatientName=STRANGER)
    misspelled_uid = generate_uid()
    _copy(roots, MR_C, archive.misspelled, SOPInstanceUID=misspelled_uid, PatientName=MISSPELLED)
    _add_legacy_row(migration.archive.legacy_db, archive.uid(MR_C), misspelled_uid, archive.misspelled)
    _copy(roots, CR_D, archive.carol_variant, SOPInstanceUID=generate_uid(), PatientName=CAROL_VARIANT)
    return archive
