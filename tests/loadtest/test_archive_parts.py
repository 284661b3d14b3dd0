"""Parts of the archive generator: header templates, destinations, stale demographics, layout."""

from __future__ import annotations

import io
import random

import pydicom
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from loadtest.archive.config import Endpoint, reconciliation_query
from loadtest.archive.header import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    FileMetaTemplate,
    HeaderTemplate,
    encode_text_element,
)
from loadtest.archive.layout import ArchiveSpec, iter_files, plan_archive, split
from loadtest.archive.people import MISMATCH_KINDS, Patient, stale_patient
from migrator.demo.archive import RECONCILIATION_QUERY


def fixed_elements() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.Rows = 512
    return ds


def test_template_renders_like_pydicom() -> None:
    """Slots land in tag order among the fixed elements, encoded as pydicom encodes them."""
    template = HeaderTemplate(fixed_elements(), ["SOPInstanceUID", "PatientName", "InstanceNumber"],
                              "latin_1")
    rendered = template.render(["1.2.3.4.5", "MÜLLER^ANNA", "7"])

    expected = fixed_elements()
    expected.SOPInstanceUID = "1.2.3.4.5"
    expected.PatientName = "MÜLLER^ANNA"
    expected.InstanceNumber = "7"
    expected.file_meta = FileMetaDataset()
    expected.file_meta.MediaStorageSOPClassUID = CTImageStorage
    expected.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")
    expected.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    expected.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    expected.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = io.BytesIO()
    dcmwrite(buffer, expected, enforce_file_format=True)

    meta = FileMetaTemplate(CTImageStorage, ExplicitVRLittleEndian).render("1.2.3.4.5")
    assert meta + rendered == buffer.getvalue()
    assert pydicom.dcmread(io.BytesIO(meta + rendered)).PatientName == "MÜLLER^ANNA"


def test_text_element_padding() -> None:
    assert encode_text_element(0x00080018, "UI", "1.2.3", "ascii") == (
        b"\x08\x00\x18\x00UI\x06\x001.2.3\x00")
    assert encode_text_element(0x00100020, "LO", "ABC", "ascii") == b"\x10\x00\x20\x00LO\x04\x00ABC "
    assert encode_text_element(0x00100020, "LO", "AB", "ascii") == b"\x10\x00\x20\x00LO\x02\x00AB"


@pytest.mark.parametrize(("slots", "message"), [
    (["Modality"], "more than once"),
    (["NoSuchKeyword"], "unknown DICOM keyword"),
    (["ReferencedImageSequence"], "only short text VRs"),
    (["PatientName", "PatientName"], "more than once"),
])
def test_template_rejects_bad_slots(slots: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeaderTemplate(fixed_elements(), slots)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:11112:NEWPACS", Endpoint("127.0.0.1", 11112, "NEWPACS")),
    ("::1:104:PACS", Endpoint("::1", 104, "PACS")),
    ("pacs.example:4242:ARCHIVE 1", Endpoint("pacs.example", 4242, "ARCHIVE 1")),
])
def test_endpoint_parses(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected
    assert Endpoint.parse(str(expected)) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1:11112", "expected HOST:PORT:AET"),
    ("127.0.0.1:port:AE", "invalid port"),
    ("127.0.0.1:70000:AE", "invalid port"),
    ("127.0.0.1:104:", "invalid AE title"),
    ("127.0.0.1:104:SEVENTEEN_CHARS_AE", "invalid AE title"),
])
def test_endpoint_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint.parse(text)


def test_query_unchanged_on_sqlite_and_quoted_elsewhere() -> None:
    assert reconciliation_query("sqlite:///legacy.sqlite3") == RECONCILIATION_QUERY
    quoted = reconciliation_query("postgresql+psycopg://reader@127.0.0.1/pacs")
    assert 'AS "SOPInstanceUID"' in quoted
    assert 'AS "FilePath"' in quoted
    assert "FROM instance AS i" in quoted


@pytest.mark.parametrize("kind", MISMATCH_KINDS)
@pytest.mark.parametrize("patient", [
    Patient("LT0000001", "MÜLLER^ANNA", "19700512", "F"),
    Patient("LT0000002", "HOFFMANN^CARL", "19521230", "M"),
    Patient("LT0000003", "ROSSI^LINA", "19850303", "F"),
])
def test_stale_patient_differs_in_one_field(patient: Patient, kind: str) -> None:
    stale = stale_patient(patient, kind, random.Random(3), temporary_id=42)
    fields = {"name": "name", "id": "patient_id", "birth_date": "birth_date"}
    for field in ("patient_id", "name", "birth_date", "sex"):
        if field == fields[kind]:
            assert getattr(stale, field) != getattr(patient, field)
        else:
            assert getattr(stale, field) == getattr(patient, field)
    assert len(stale.birth_date) == 8
    assert stale.name.replace("^", "").isalpha()


def test_split_is_exact() -> None:
    rng = random.Random(1)
    for total, parts in [(200, 7), (10, 10), (1_000, 3)]:
        sizes = split(total, parts, rng)
        assert sum(sizes) == total
        assert min(sizes) >= 1


@pytest.mark.parametrize("instances", [1, 2, 7, 100])
def test_tiny_archives_plan(instances: int) -> None:
    """Small counts still give whole studies, every instance exactly once."""
    spec = ArchiveSpec(instances=instances, roots=11, nonpixel_rate=0.5)
    plan = plan_archive(spec)
    files = list(iter_files(plan))
    assert len({file.sop_instance_uid for file in files}) == instances
    images = sum(series.size for study in plan.studies for series in study.series if series.kind == "CT")
    assert images >= 1
    assert len(plan.studies) == min(images, 11)  # one study per root while there are enough images
    for study in plan.studies:
        assert study.series[0].kind == "CT"
