"""Reading headers for the index: what is recorded and why a file is unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from migrator.dicom.read import UnreadableFile, read_header, read_instance


def _sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom sample {name} is missing"
    return Path(str(path))


def test_jpeg2000_header_fields() -> None:
    """A JPEG 2000 file is indexed with its transfer syntax, UIDs and Pixel Data."""
    path = _sample("MR_small_jp2klossless.dcm")
    header = read_header(path)
    ds = dcmread(path, stop_before_pixels=True)
    assert header.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_uid == ds.StudyInstanceUID
    assert header.modality == "MR"
    assert header.has_pixel_data is True


def test_sr_has_no_pixel_data() -> None:
    """A structured report is indexed without Pixel Data."""
    assert read_header(_sample("test-SR.dcm")).has_pixel_data is False


def test_empty_file_is_unreadable(tmp_path: Path) -> None:
    """A zero-byte file is reported as empty."""
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(UnreadableFile, match="empty file"):
        read_header(path)


def test_text_file_is_unreadable(tmp_path: Path) -> None:
    """A file without the DICM prefix is reported as not DICOM."""
    path = tmp_path / "notes.dcm"
    path.write_text("scanned request form\n" * 20)
    with pytest.raises(UnreadableFile, match="not a DICOM Part 10 file"):
        read_header(path)


def test_truncated_file_is_reported_as_truncated(tmp_path: Path) -> None:
    """A file cut inside its header is called truncated, not just missing a UID."""
    data = _sample("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:700])
    with pytest.raises(UnreadableFile, match="truncated file"):
        read_header(path)


def test_missing_uid_names_the_tag(tmp_path: Path) -> None:
    """A complete file without SOP Instance UID names the missing tag."""
    ds = dcmread(_sample("CT_small.dcm"))
    del ds.SOPInstanceUID
    path = tmp_path / "no-uid.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableFile, match=r"missing \(0008,0018\) SOP Instance UID"):
        read_header(path)


def test_vanished_file_names_the_mount(tmp_path: Path) -> None:
    """Reading a file that is gone suggests checking the storage root."""
    with pytest.raises(UnreadableFile, match="storage root is mounted"):
        read_instance(tmp_path / "gone.dcm")
