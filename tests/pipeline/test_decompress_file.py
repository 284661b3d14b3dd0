"""Decoded copies: frames, trailing elements, lossy attributes, memory and failures."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from migrator.config import DestinationConfig
from migrator.demo.scp import StorageSCP
from migrator.dicom.decompress import DecompressError, Decompressor, decompress_file
from migrator.dicom.engines import open_engine
from migrator.dicom.prepare import Method, PreparedFile, ScratchFolder, prepare_file
from migrator.dicom.send import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    DestinationGuard,
    with_decompressed_contexts,
)
from migrator.steps import Change

CALLING_AE = "MIGRATOR"


@pytest.fixture
def scratch() -> Iterator[ScratchFolder]:
    with ScratchFolder() as folder:
        yield folder


def _sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


def _saved(tmp_path: Path, name: str, change: str = "") -> Path:
    """Save a copy of a pydicom sample, after deleting or adding what ``change`` names."""
    ds = pydicom.dcmread(_sample(name))
    if change == "no lossy attributes":
        del ds.LossyImageCompression
    elif change == "trailing elements":
        ds.add_new(0x7FE10010, "LO", "MIGRATOR TEST")
        ds.add_new(0x7FE11000, "LO", "after pixel data")
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)
    path = tmp_path / f"{change or 'copy'}-{name}"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multiframe_copy_has_every_frame(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A 10-frame JPEG 2000 image becomes 10 native frames with the same pixels."""
    source = _sample("emri_small_jpeg_2k_lossless.dcm")
    copy, conversion = decompress_file(prepare_file(source, None, scratch), scratch, "a reason")
    arrived = pydicom.dcmread(copy.path)
    stored = pydicom.dcmread(source)
    assert copy.method is Method.DECOMPRESSED
    assert copy.transfer_syntax == arrived.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert arrived.NumberOfFrames == 10
    assert len(arrived.PixelData) == 10 * 64 * 64 * 2
    assert arrived["PixelData"].VR == "OW"
    assert np.array_equal(arrived.pixel_array, stored.pixel_array)
    assert (conversion.old_syntax, conversion.reason, conversion.lossy_source, conversion.changes) == (
        "1.2.840.10008.1.2.4.90", "a reason", False, ())


def test_multiframe_decoded_one_frame_at_a_time(scratch: ScratchFolder) -> None:
    """Decoding a 30-frame JPEG allocates less at its peak than the decoded Pixel Data's size."""
    source = _sample("examples_ybr_color.dcm")
    prepared = prepare_file(source, None, scratch)
    tracemalloc.start()
    try:
        copy, _ = decompress_file(prepared, scratch, "a reason")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = len(pydicom.dcmread(copy.path).PixelData)
    assert decoded == 30 * 240 * 320 * 3
    # Decoding the whole array at once would hold at least the decoded size, twice with its bytes.
    assert peak < decoded, f"peak {peak} bytes for {decoded} bytes of Pixel Data"


def test_corrected_header_is_kept(scratch: ScratchFolder) -> None:
    """The copy carries the corrections of the prepared file and keeps the SOP Instance UID."""
    source = _sample("MR_small_jp2klossless.dcm")

    def correct(ds: Dataset) -> list[Change]:
        ds.PatientName = "CORRECTED^NAME"
        return [Change("PatientName", "CompressedSamples^MR1", "CORRECTED^NAME")]

    prepared = prepare_file(source, correct, scratch)
    copy, _ = decompress_file(prepared, scratch, "a reason")
    arrived = pydicom.dcmread(copy.path)
    assert arrived.PatientName == "CORRECTED^NAME"
    assert arrived.SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert copy.changes == prepared.changes
    assert np.array_equal(arrived.pixel_array, pydicom.dcmread(source).pixel_array)


def test_lossy_source_is_marked(tmp_path: Path, scratch: ScratchFolder) -> None:
    """Lossy JPEG 2000 without (0028,2110) gets 01 and ISO_15444_1, and RGB for its colour transform."""
    source = _saved(tmp_path, "US1_J2KI.dcm", "no lossy attributes")
    copy, conversion = decompress_file(prepare_file(source, None, scratch), scratch, "a reason")
    arrived = pydicom.dcmread(copy.path)
    assert conversion.lossy_source
    assert conversion.reason == ("a reason; its transfer syntax allows lossy compression, and the copy "
                                 "contains the stored pixel values, decoded without further loss")
    assert list(conversion.changes) == [Change("PhotometricInterpretation", "YBR_ICT", "RGB"),
                                        Change("LossyImageCompression", None, "01"),
                                        Change("LossyImageCompressionMethod", None, "ISO_15444_1")]
    assert (arrived.PhotometricInterpretation, arrived.LossyImageCompression,
            arrived.LossyImageCompressionMethod) == ("RGB", "01", "ISO_15444_1")
    assert arrived.PlanarConfiguration == 0
    assert np.array_equal(arrived.pixel_array, pydicom.dcmread(source).pixel_array)


def test_trailing_elements_follow_pixel_data(tmp_path: Path, scratch: ScratchFolder) -> None:
    """Elements after Pixel Data are kept, except Data Set Trailing Padding."""
    source = _saved(tmp_path, "MR_small_jp2klossless.dcm", "trailing elements")
    copy, _ = decompress_file(prepare_file(source, None, scratch), scratch, "a reason")
    arrived = pydicom.dcmread(copy.path)
    assert arrived[0x7FE11000].value == "after pixel data"
    assert 0xFFFCFFFC not in arrived
    assert np.array_equal(arrived.pixel_array, pydicom.dcmread(source).pixel_array)


def test_undecodable_pixel_data_is_named(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A damaged codestream raises DecompressError naming the frame, and leaves no file behind."""
    ds = pydicom.dcmread(_sample("MR_small_jp2klossless.dcm"))
    ds.PixelData = ds.PixelData[:40] + b"\x00" * (len(ds.PixelData) - 40)
    path = tmp_path / "damaged.dcm"
    ds.save_as(path, enforce_file_format=True)
    prepared = prepare_file(path, None, scratch)
    with pytest.raises(DecompressError, match="cannot decode frame 1 of 1"):
        decompress_file(prepared, scratch, "a reason")
    pattern = f"migrator-send-{os.getpid()}-*/*"
    assert [*Path("/dev/shm").glob(pattern), *Path(tempfile.gettempdir()).glob(pattern)] == []


def test_context_without_explicit_little_endian_fails(tmp_path: Path, scratch: ScratchFolder) -> None:
    """A destination that accepts neither the stored syntax nor Explicit VR LE fails the file by name."""
    source = _sample("JPEG2000.dcm")
    prepared = prepare_file(source, None, scratch)
    destination = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=104)
    only_lossless = ["1.2.840.10008.1.2.4.90"]
    with StorageSCP("PACS", tmp_path / "received", [CALLING_AE], transfer_syntaxes=only_lossless) as scp:
        destination = destination.model_copy(update={"port": scp.port})
        pairs = with_decompressed_contexts({(prepared.sop_class_uid, prepared.transfer_syntax),
                                            ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.4.90")})
        guard = DestinationGuard("main", destination)
        with open_engine(CALLING_AE, "main", destination, pairs, guard,
                         Decompressor("main", scratch)) as engine:
            [(_, result)] = list(engine.send([("key", prepared)]))
    assert result.category == "failure"
    assert result.context_rejected
    assert result.detail == (
        f"destination main did not accept the presentation context {prepared.sop_class_uid} with "
        "transfer syntax 1.2.840.10008.1.2.4.91 (JPEG 2000 Image Compression), nor with 1.2.840.10008.1.2.1 "
        "(Explicit VR Little Endian) for a decompressed copy")
    assert not scp.arrivals


def test_stored_file_is_not_changed(scratch: ScratchFolder) -> None:
    """Decoding reads the prepared file and never changes the stored one."""
    source = _sample("MR_small_jp2klossless.dcm")
    before = source.read_bytes()
    prepared = prepare_file(source, None, scratch)
    assert prepared == PreparedFile(source, prepared.sop_class_uid, prepared.sop_instance_uid,
                                    "1.2.840.10008.1.2.4.90", [], Method.AS_STORED)
    copy, _ = decompress_file(prepared, scratch, "a reason")
    copy.discard()
    assert source.read_bytes() == before
    assert not copy.path.exists()
