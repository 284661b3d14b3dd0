"""Tests for the correction step that sets header values from the legacy database."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from migrator.steps import Change, StepContext, run_steps
from migrator.steps.correct import correct_from_legacy

SOP_INSTANCE_UID = "1.2.826.0.1.3680043.8.498.2001"
GERMAN_NAME = "MÜLLER^JÖRG"
JAPANESE_NAME = "山田^太郎"


def make_dataset(charset: str | None = None, **values: str) -> Dataset:
    """Build a Secondary Capture header that can be written as a DICOM file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_INSTANCE_UID
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = SOP_INSTANCE_UID
    ds.PatientID = "P001"
    ds.PatientName = "MUELLER^JOERG"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def round_trip(ds: Dataset, path: Path) -> Dataset:
    """Write ``ds`` as a DICOM file and read it back."""
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def correct(ds: Dataset, **legacy: str) -> list[Change]:
    return correct_from_legacy(ds, StepContext(instance_id=1, legacy_values=legacy))


class TestChanges:
    def test_only_differing_keywords_change(self) -> None:
        """Equal values are left alone, differing ones are set and recorded with old and new."""
        ds = make_dataset(AccessionNumber="ACC001")

        changes = correct(ds, PatientID="P001", AccessionNumber="ACC002")

        assert changes == [Change("AccessionNumber", "ACC001", "ACC002")]
        assert ds.AccessionNumber == "ACC002"
        assert ds.PatientID == "P001"

    def test_missing_keyword_is_added(self) -> None:
        """A keyword absent from the header is added with old value None."""
        ds = make_dataset()

        changes = correct(ds, PatientBirthDate="19700102")

        assert changes == [Change("PatientBirthDate", None, "19700102")]
        assert ds.PatientBirthDate == "19700102"

    def test_empty_header_value_is_replaced(self) -> None:
        """An empty header value counts as missing."""
        ds = make_dataset(AccessionNumber="")

        changes = correct(ds, AccessionNumber="ACC001")

        assert changes == [Change("AccessionNumber", None, "ACC001")]

    def test_no_legacy_values_no_changes(self) -> None:
        """Without legacy values the dataset is unchanged."""
        ds = make_dataset()
        before = Dataset(ds)

        assert correct(ds) == []
        assert ds == before

    def test_trailing_spaces_not_a_change(self) -> None:
        """Values differing only in padding spaces are equal."""
        ds = make_dataset(AccessionNumber="ACC001 ")

        assert correct(ds, AccessionNumber="ACC001") == []
        assert correct(ds, PatientID="P001  ") == []

    def test_pn_trailing_carets_not_a_change(self) -> None:
        """Person names differing only in empty trailing components are equal."""
        ds = make_dataset(PatientName="DOE^JOHN^^^")

        assert correct(ds, PatientName="DOE^JOHN") == []
        assert correct(ds, PatientName="DOE^JOHN^") == []

    def test_trailing_carets_matter_outside_pn(self) -> None:
        """A trailing '^' is part of the value in a VR other than PN."""
        ds = make_dataset(AccessionNumber="ACC001")

        changes = correct(ds, AccessionNumber="ACC001^")

        assert changes == [Change("AccessionNumber", "ACC001", "ACC001^")]

    def test_multi_valued_compared_as_text(self) -> None:
        """A multi-valued element compares as its backslash-joined string."""
        ds = make_dataset()
        ds.OtherPatientIDs = ["X1", "X2"]

        assert correct(ds, OtherPatientIDs="X1\\X2") == []
        assert correct(ds, OtherPatientIDs="X1\\X3") == [
            Change("OtherPatientIDs", "X1\\X2", "X1\\X3")
        ]

    def test_run_steps_collects_changes(self) -> None:
        """run_steps returns the changes of every step in order."""
        ds = make_dataset()
        context = StepContext(instance_id=1, legacy_values={"PatientID": "P002"})

        changes = run_steps([correct_from_legacy, correct_from_legacy], ds, context)

        assert changes == [Change("PatientID", "P001", "P002")]


class TestCharacterSet:
    def test_non_ascii_without_charset_switches_to_utf8(self, tmp_path: Path) -> None:
        """A non-ASCII name into the default repertoire switches to ISO_IR 192 and reads back."""
        ds = make_dataset()

        changes = correct(ds, PatientName=GERMAN_NAME)
        written = round_trip(ds, tmp_path / "corrected.dcm")

        assert changes == [
            Change("PatientName", "MUELLER^JOERG", GERMAN_NAME),
            Change("SpecificCharacterSet", None, "ISO_IR 192"),
        ]
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert written.SpecificCharacterSet == "ISO_IR 192"
        assert written.PatientName == GERMAN_NAME

    def test_iso_ir_6_switches_for_non_ascii(self) -> None:
        """An explicit ISO_IR 6 (ASCII) dataset also switches for a non-ASCII name."""
        ds = make_dataset("ISO_IR 6")

        changes = correct(ds, PatientName=GERMAN_NAME)

        assert changes[-1] == Change("SpecificCharacterSet", "ISO_IR 6", "ISO_IR 192")

    def test_iso_2022_switches_for_non_ascii(self) -> None:
        """With ISO 2022 code extensions any non-ASCII value switches to UTF-8."""
        ds = make_dataset()
        ds.SpecificCharacterSet = ["ISO 2022 IR 100", "ISO 2022 IR 87"]

        changes = correct(ds, PatientName=GERMAN_NAME)

        assert changes[-1].keyword == "SpecificCharacterSet"
        assert ds.SpecificCharacterSet == "ISO_IR 192"

    def test_ascii_without_charset_keeps_default(self) -> None:
        """An ASCII value leaves a dataset without Specific Character Set as it is."""
        ds = make_dataset()

        correct(ds, PatientName="DOE^JANE")

        assert "SpecificCharacterSet" not in ds

    def test_latin1_name_keeps_iso_ir_100(self, tmp_path: Path) -> None:
        """A Latin-1 name into an ISO_IR 100 dataset keeps ISO_IR 100 and reads back."""
        ds = make_dataset("ISO_IR 100")

        changes = correct(ds, PatientName=GERMAN_NAME)
        path = tmp_path / "corrected.dcm"
        written = round_trip(ds, path)

        assert changes == [Change("PatientName", "MUELLER^JOERG", GERMAN_NAME)]
        assert written.SpecificCharacterSet == "ISO_IR 100"
        assert written.PatientName == GERMAN_NAME
        assert GERMAN_NAME.encode("latin-1") in path.read_bytes()

    def test_latin1_value_from_file_equals_legacy(self, tmp_path: Path) -> None:
        """A name stored in ISO 8859-1 equals the same name returned by the database."""
        ds = round_trip(make_dataset("ISO_IR 100", PatientName=GERMAN_NAME), tmp_path / "in.dcm")

        assert correct(ds, PatientName=GERMAN_NAME) == []

    def test_japanese_name_switches_latin1_to_utf8(self, tmp_path: Path) -> None:
        """A name Latin-1 cannot encode switches to UTF-8 and keeps other non-ASCII values."""
        original = make_dataset(
            "ISO_IR 100",
            StudyDescription="Röntgen Thorax",
            ReferringPhysicianName="GÜNTHER^ÄRZTIN",
        )
        item = Dataset()
        item.RequestedProcedureDescription = "Schädel nativ"
        original.RequestAttributesSequence = [item]
        ds = round_trip(original, tmp_path / "latin1.dcm")

        changes = correct(ds, PatientName=JAPANESE_NAME)
        path = tmp_path / "corrected.dcm"
        written = round_trip(ds, path)

        assert changes == [
            Change("PatientName", "MUELLER^JOERG", JAPANESE_NAME),
            Change("SpecificCharacterSet", "ISO_IR 100", "ISO_IR 192"),
        ]
        assert written.SpecificCharacterSet == "ISO_IR 192"
        assert written.PatientName == JAPANESE_NAME
        assert written.StudyDescription == "Röntgen Thorax"
        assert written.ReferringPhysicianName == "GÜNTHER^ÄRZTIN"
        assert written.RequestAttributesSequence[0].RequestedProcedureDescription == "Schädel nativ"
        assert "Röntgen".encode("utf-8") in path.read_bytes()
