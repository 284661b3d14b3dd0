"""Reading and preparing the bad and odd files of loadtest.badfiles, without a network."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_fragments

from loadtest.badfiles import (
    SENT,
    SINBINNED,
    UNREADABLE,
    BadFileSpec,
    encode,
    write_bad_files,
)
from migrator.collisions.hashing import PatientHasher
from migrator.dicom.prepare import Method, ScratchFolder, prepare_file
from migrator.dicom.read import (
    UnreadableFile,
    read_header,
    read_header_dataset,
    read_send_header,
)
from migrator.index import header
from migrator.index.header import read_index_fields

HASHER = PatientHasher(b"k" * 32)
AS_ROOT = os.geteuid() == 0
# pydicom warns about each oddity that the files have on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[BadFileSpec]]]:
    base = tmp_path_factory.mktemp("bad")
    specs = write_bad_files(base / "root" / "bad", base / "outside")
    yield base / "root" / "bad", specs
    for path in [base, *base.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755)  # so that pytest can remove the folders of mode 000


def _files(bad: tuple[Path, list[BadFileSpec]], *outcomes: str) -> list[tuple[Path, BadFileSpec]]:
    """The regular files of the given expected outcomes, for a reader that runs as this user."""
    folder, specs = bad
    return [(folder / spec.rel_path, spec) for spec in specs
            if spec.expected_for(AS_ROOT).outcome in outcomes and not (folder / spec.rel_path).is_symlink()]


def _full(path: Path) -> dict[str, object] | str:
    try:
        ds, parsed = read_header_dataset(path)
    except UnreadableFile as exc:
        return str(exc)
    fields: dict[str, object] = dict(parsed.__dict__)
    fields["patient_id_hash"] = HASHER.patient_id(header._text(ds, "PatientID"))
    fields["patient_name_hash"] = HASHER.patient_name(header._text(ds, "PatientName"))
    return fields


def _quick(path: Path) -> dict[str, object] | str:
    try:
        return read_index_fields(path, HASHER)
    except UnreadableFile as exc:
        return str(exc)


def test_index_fields_match_full_read(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """The index's quick read gives the full read's fields or error for every bad file."""
    for path, spec in _files(bad, SENT, SINBINNED, UNREADABLE):
        assert _quick(path) == _full(path), spec.kind


def test_unreadable_files_name_the_reason(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """Each unreadable kind is rejected with the reason its spec names."""
    unreadable = _files(bad, UNREADABLE)
    assert {spec.kind for _, spec in unreadable} >= {"truncated_header", "pixel_data_short", "dicomdir"}
    for path, spec in unreadable:
        expected = spec.expected_for(AS_ROOT).reason
        assert expected is not None
        with pytest.raises(UnreadableFile, match=expected.replace("(", r"\(").replace(")", r"\)")):
            read_header(path)


def test_readable_files_are_indexed(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """Every file that is sent is indexed with its UIDs and the transfer syntax it is sent in."""
    for path, spec in _files(bad, SENT, SINBINNED):
        fields = read_header(path)
        assert fields.sop_instance_uid == spec.sop_instance_uid, spec.kind
        assert fields.transfer_syntax == spec.transfer_syntax, spec.kind
        assert fields.has_pixel_data is (spec.kind != "no_file_meta_nonpixel"), spec.kind


def test_prepared_files_have_even_length(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """The file to send is a Part 10 file of even length for every kind that is sent."""
    with ScratchFolder() as scratch:
        for path, spec in _files(bad, SENT):
            prepared = prepare_file(path, None, scratch)
            size = prepared.path.stat().st_size
            assert size % 2 == 0, spec.kind
            assert prepared.path.read_bytes()[128:132] == b"DICM", spec.kind
            ds = pydicom.dcmread(prepared.path)
            assert ds.file_meta.MediaStorageSOPInstanceUID == spec.sop_instance_uid, spec.kind
            assert ds.file_meta.TransferSyntaxUID == spec.transfer_syntax, spec.kind


def test_odd_fragment_gets_one_null_byte(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """An odd JPEG 2000 fragment is sent with a trailing NULL and its other bytes unchanged."""
    folder, _ = bad
    path = folder / "odd-length-j2k-fragment.dcm"
    assert read_send_header(path).odd_pixel_data
    with ScratchFolder() as scratch:
        prepared = prepare_file(path, None, scratch)
        assert prepared.method is Method.SPLICED
        sent = list(generate_fragments(pydicom.dcmread(prepared.path).PixelData))
    stored = list(generate_fragments(pydicom.dcmread(path).PixelData))
    assert len(stored[-1]) % 2 == 1
    assert sent[:-1] == stored[:-1]
    assert sent[-1] == stored[-1] + b"\x00"


def test_odd_values_are_padded(bad: tuple[Path, list[BadFileSpec]]) -> None:
    """Odd top-level values get a NULL (UI) or a space (text) in the file to send."""
    folder, _ = bad
    path = folder / "odd-length-values.dcm"
    assert set(read_send_header(path).padded) == {"(0008,0018)", "(0008,1010)", "(0008,1030)"}
    with ScratchFolder() as scratch:
        prepared = prepare_file(path, None, scratch)
        written = prepared.path.read_bytes()
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID.encode("ascii")
    assert encode.explicit_element(0x00080018, "UI", uid + b"\x00") in written
    assert encode.explicit_element(0x00081010, "SH", b"ODDSTAT ") in written
    assert encode.explicit_element(0x00081030, "LO", b"ODD VALUE ") in written


def test_odd_native_pixel_data_is_padded(tmp_path: Path) -> None:
    """Native Pixel Data of odd length is sent one NULL byte longer, with its length changed."""
    source = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for tag in [tag for tag in source.keys() if tag >= 0x7FE00000 or tag.element == 0]:
        del source[tag]
    source.Rows, source.Columns, source.BitsAllocated, source.BitsStored, source.HighBit = 3, 3, 8, 8, 7
    pixels = bytes(range(9))
    path = tmp_path / "odd-pixels.dcm"
    path.write_bytes(encode.PREAMBLE + encode.file_meta(source.file_meta)
                     + encode.data_set(source, implicit=False)
                     + encode.explicit_element(0x7FE00010, "OB", pixels))
    with ScratchFolder() as scratch:
        prepared = prepare_file(path, None, scratch)
        written = prepared.path.read_bytes()
    assert written.endswith(encode.tag_bytes(0x7FE00010) + b"OB\x00\x00" + struct.pack("<I", 10)
                            + pixels + b"\x00")
