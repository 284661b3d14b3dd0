"""Preparing files to send: stored bytes kept, corrected headers spliced in front of Pixel Data."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.dsutils import split_dataset

from migrator.dicom.prepare import (
    Method,
    ScratchFolder,
    prepare_file,
    remove_stale_folders,
)
from migrator.dicom.read import UnreadableFile, read_send_header
from migrator.steps import Change, StepContext
from migrator.steps.correct import correct_from_legacy


def _sample(name: str, tmp_path: Path) -> Path:
    source = get_testdata_file(name)
    assert source is not None, f"pydicom test file {name} is missing"
    target = tmp_path / name
    shutil.copyfile(source, target)
    return target


def _correct(values: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda ds: correct_from_legacy(ds, StepContext(1, values))


def _tail(path: Path) -> bytes:
    """Return the bytes of ``path`` from its Pixel Data element to the end."""
    header = read_send_header(path)
    return path.read_bytes()[header.pixel_offset:]


def _data_set_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture
def scratch() -> Iterator[ScratchFolder]:
    with ScratchFolder() as folder:
        yield folder


def test_unchanged_file_is_sent_as_stored(tmp_path: Path, scratch: ScratchFolder) -> None:
    """Without changes the file to send is the stored file itself."""
    path = _sample("MR_small_jp2klossless.dcm", tmp_path)
    before = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    prepared = prepare_file(path, _correct({"PatientID": str(ds.PatientID)}), scratch)
    assert prepared.method is Method.AS_STORED
    assert prepared.path == path
    assert prepared.changes == []
    assert prepared.transfer_syntax == "1.2.840.10008.1.2.4.90"
    prepared.discard()
    assert path.read_bytes() == before


def test_sinbin_file_is_not_corrected(tmp_path: Path, scratch: ScratchFolder) -> None:
    """Without correction steps nothing is changed, even where the legacy values differ."""
    path = _sample("CT_small.dcm", tmp_path)
    prepared = prepare_file(path, None, scratch)
    assert prepared.method is Method.AS_STORED
    assert prepared.path == path


def test_pixel_offset_points_at_pixel_data_tag(tmp_path: Path) -> None:
    """The header read stops at the (7FE0,0010) tag, which is where the stored tail starts."""
    path = _sample("MR_small_jp2klossless.dcm", tmp_path)
    header = read_send_header(path)
    assert "PixelData" not in header.dataset
    assert path.read_bytes()[header.pixel_offset:header.pixel_offset + 4] == b"\xe0\x7f\x10\x00"
    assert header.size == path.stat().st_size


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
                                  "CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"])
def test_correction_is_spliced_before_stored_bytes(tmp_path: Path, scratch: ScratchFolder,
                                                   name: str) -> None:
    """A changed header precedes the stored bytes from Pixel Data on, in the stored transfer syntax."""
    path = _sample(name, tmp_path)
    original = pydicom.dcmread(path)
    prepared = prepare_file(path, _correct({"PatientName": "NEW^NAME", "PatientID": "NEW-ID"}), scratch)
    assert prepared.method is Method.SPLICED
    assert prepared.path != path
    assert [change.keyword for change in prepared.changes] == ["PatientName", "PatientID"]
    assert _tail(prepared.path) == _tail(path)
    written = pydicom.dcmread(prepared.path)
    assert written.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert written.PatientName == "NEW^NAME"
    assert written.PatientID == "NEW-ID"
    for element in original:
        if element.keyword not in ("PatientName", "PatientID"):
            assert written[element.tag].value == element.value, element.keyword
    prepared.discard()
    assert not prepared.path.exists()


def test_corrected_header_keeps_other_element_bytes(tmp_path: Path, scratch: ScratchFolder) -> None:
    """Elements that no step changed are written with their stored bytes."""
    path = _sample("MR_small_jp2klossless.dcm", tmp_path)
    prepared = prepare_file(path, _correct({"AccessionNumber": "A1"}), scratch)
    old, new = _data_set_bytes(path), _data_set_bytes(prepared.path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    start = ds["StudyInstanceUID"].value
    assert old[old.index(start.encode()):] == new[new.index(start.encode()):]


def test_stale_group_lengths_are_dropped(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A (gggg,0000) Group Length would be wrong after a change, so it is left out."""
    path = tmp_path / "with-group-length.dcm"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00100000, "UL", 1234)
    ds.save_as(path, enforce_file_format=True)
    prepared = prepare_file(path, _correct({"PatientName": "LONGER^NAME^THAN^BEFORE"}), scratch)
    written = pydicom.dcmread(prepared.path)
    assert 0x00100000 not in written
    assert written.PatientName == "LONGER^NAME^THAN^BEFORE"


def test_mismatched_file_meta_is_rewritten(tmp_path: Path, scratch: ScratchFolder) -> None:
    """File Meta naming another instance is corrected, because the C-STORE takes the UIDs from it."""
    path = tmp_path / "mismatch.dcm"
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(path)
    prepared = prepare_file(path, None, scratch)
    assert prepared.method is Method.SPLICED
    assert prepared.changes == []
    written = pydicom.dcmread(prepared.path)
    assert written.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert _tail(prepared.path) == _tail(path)


def test_deflated_file_is_rewritten_whole(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A deflated data set is one zlib stream, so a corrected one is written again in full."""
    path = _sample("image_dfl.dcm", tmp_path)
    original = pydicom.dcmread(path)
    prepared = prepare_file(path, _correct({"PatientName": "DEFLATED^PATIENT"}), scratch)
    assert prepared.method is Method.REWRITTEN
    assert [change.keyword for change in prepared.changes] == ["PatientName"]
    written = pydicom.dcmread(prepared.path)
    assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert written.PatientName == "DEFLATED^PATIENT"
    assert written.PixelData == original.PixelData


def test_unchanged_deflated_file_is_sent_as_stored(tmp_path: Path, scratch: ScratchFolder) -> None:
    """The stored bytes of a deflated file are right as they are."""
    path = _sample("image_dfl.dcm", tmp_path)
    assert prepare_file(path, None, scratch).method is Method.AS_STORED


def test_charset_switch_is_spliced(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A name the character set cannot hold switches the header to UTF-8, pixels untouched."""
    path = _sample("MR_small_jp2klossless.dcm", tmp_path)
    prepared = prepare_file(path, _correct({"PatientName": "Müller^Jürgen"}), scratch)
    assert prepared.method is Method.SPLICED
    assert "SpecificCharacterSet" in [change.keyword for change in prepared.changes]
    written = pydicom.dcmread(prepared.path)
    assert written.SpecificCharacterSet == "ISO_IR 192"
    assert written.PatientName == "Müller^Jürgen"
    assert _tail(prepared.path) == _tail(path)


def test_element_added_after_pixel_data_rewrites_whole(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A step that adds an element after Pixel Data cannot be spliced in front of it."""
    path = _sample("CT_small.dcm", tmp_path)

    def add_padding(ds: Dataset) -> list[Change]:
        ds.add_new(0xFFFCFFFC, "OB", b"\x00\x00")
        return [Change("DataSetTrailingPadding", None, "2 bytes")]

    prepared = prepare_file(path, add_padding, scratch)
    assert prepared.method is Method.REWRITTEN
    written = pydicom.dcmread(prepared.path)
    assert written.PixelData == pydicom.dcmread(path).PixelData
    assert 0xFFFCFFFC in written


def test_missing_file_is_unreadable(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A file that vanished after indexing raises UnreadableFile naming the likely cause."""
    with pytest.raises(UnreadableFile, match="storage root is mounted"):
        prepare_file(tmp_path / "gone.dcm", None, scratch)


def test_scratch_folder_is_removed(tmp_path: Path) -> None:
    """Files written for sending are gone once the scratch folder closes."""
    path = _sample("CT_small.dcm", tmp_path)
    with ScratchFolder() as scratch:
        prepared = prepare_file(path, _correct({"PatientName": "X^Y"}), scratch)
        folder = prepared.path.parent
        assert prepared.path.exists()
    assert not folder.exists()


def test_stale_folders_of_dead_workers_are_removed(tmp_path: Path) -> None:
    """Folders left by a killed worker are removed, and those of running processes stay."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = tmp_path / f"migrator-send-{ended.pid}-abc"
    live = tmp_path / f"migrator-send-{os.getpid()}-def"
    other = tmp_path / "migrator-send-notapid"
    for folder in (stale, live, other):
        folder.mkdir()
    remove_stale_folders(tmp_path, "migrator-send-")
    assert not stale.exists()
    assert live.exists()
    assert other.exists()
