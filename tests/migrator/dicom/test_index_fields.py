"""The index's quick header read gives the fields of the full read, or hands the file to it."""

from __future__ import annotations

import importlib.resources
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from migrator.collisions.hashing import PatientHasher
from migrator.dicom.read import UnreadableFile, read_header_dataset
from migrator.index import header
from migrator.index.header import read_index_fields

HASHER = PatientHasher(b"k" * 32)


def _sample_files() -> list[Path]:
    """pydicom's own test files and those of pydicom-data, read from disk (no download)."""
    folders = [Path(pydicom.__file__).parent / "data" / "test_files",
               Path(str(importlib.resources.files("data_store"))) / "data"]
    return sorted(path for folder in folders for path in folder.rglob("*") if path.is_file())


def _full(path: str | Path) -> dict[str, object] | str:
    """The index fields as the full read gives them, or its error message."""
    try:
        ds, parsed = read_header_dataset(path)
    except UnreadableFile as exc:
        return str(exc)
    fields: dict[str, object] = dict(parsed.__dict__)
    fields["patient_id_hash"] = HASHER.patient_id(header._text(ds, "PatientID"))
    fields["patient_name_hash"] = HASHER.patient_name(header._text(ds, "PatientName"))
    return fields


def _quick(path: str | Path) -> dict[str, object] | str:
    try:
        return read_index_fields(path, HASHER)
    except UnreadableFile as exc:
        return str(exc)


def test_quick_read_matches_sample_files() -> None:
    """pydicom's sample files cover many devices, syntaxes, character sets and odd encodings."""
    quick = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _sample_files():
            if header._quick_read(path) is not None:
                quick += 1
            assert _quick(path) == _full(path), path
    # Most sample files are ordinary Part 10 files, which the quick read must take itself.
    assert quick > 100


def _write_mismatched(path: Path) -> pydicom.Dataset:
    """Write CT_small with File Meta saying Explicit VR Little Endian over an Implicit VR body."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    meta = ds.file_meta
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    with path.open("wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        meta_out = DicomBytesIO()
        meta_out.is_little_endian, meta_out.is_implicit_VR = True, False
        write_file_meta_info(meta_out, meta, enforce_standard=True)
        fp.write(meta_out.getvalue())
        fp.write(body.getvalue())
    return ds


def test_syntax_mismatch_read_in_full(tmp_path: Path) -> None:
    """A file whose File Meta gives Explicit VR over an Implicit VR body goes to pydicom's own reader."""
    path = tmp_path / "mismatch.dcm"
    ds = _write_mismatched(path)
    assert header._quick_read(path) is None
    fields = _quick(path)
    assert fields == _full(path)
    assert isinstance(fields, dict) and fields["sop_instance_uid"] == ds.SOPInstanceUID


@pytest.mark.parametrize("cut", [0, 100, 300, 700])
def test_truncated_file_full_read_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.dcm"
    source = Path(get_testdata_file("CT_small.dcm"))
    path.write_bytes(source.read_bytes()[:cut])
    assert _quick(path) == _full(path)
    assert isinstance(_quick(path), str)


def test_jpeg2000_file_is_read_quickly(tmp_path: Path) -> None:
    path = tmp_path / "j2k.dcm"
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), path)
    assert header._quick_read(path) is not None
    fields = _quick(path)
    assert fields == _full(path)
    assert isinstance(fields, dict) and fields["has_pixel_data"] is True
