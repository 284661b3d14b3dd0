"""Writing the bad and odd files, each a copy of a pydicom sample with new UIDs.

Every file gets new UIDs from the seed, one study for all of them, the
Patient ID ``BADFILES`` and no other patient identifier of the sample. A
file that the legacy database corrects has the Patient Name
``BADFILES^BEFORE`` in its header, and the database has ``BADFILES^AFTER``.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_fragments
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from loadtest.badfiles import encode
from loadtest.badfiles.spec import (
    MAIN,
    NONPIXEL,
    NOT_INDEXED,
    SENT,
    SINBINNED,
    UNREADABLE,
    BadFileSpec,
    Expected,
)
from migrator.demo.archive import find_sample, read_sample

PATIENT_ID = "BADFILES"
NAME_BEFORE = "BADFILES^BEFORE"
NAME_AFTER = "BADFILES^AFTER"
#: The correction the legacy database makes to a file written with ``corrected=True``.
CORRECTION = {"PatientName": NAME_AFTER}

_UID_NAMESPACE = "pacs-migrator-badfiles"
#: Identifying elements of the samples' own patients.
_STALE_PATIENT_KEYWORDS = ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
                           "PatientAddress", "PatientBirthName", "PatientMotherBirthName",
                           "PatientTelephoneNumbers", "MilitaryRank", "EthnicGroup")
#: Bytes per frame of the large multi-frame image: 512 x 512 pixels of 16 bits.
FRAME_BYTES = 512 * 512 * 2
_PRIVATE_CREATOR = "BADFILES TEST"


def _sample(name: str) -> FileDataset:
    path = find_sample(name)
    if path is None:
        raise FileNotFoundError(f"the pydicom sample file {name} is missing; reinstall pydicom "
                                "and pydicom-data")
    return read_sample(path)


@dataclass
class _Writer:
    folder: Path
    outside: Path
    seed: int
    study_uid: str
    specs: list[BadFileSpec] = field(default_factory=list)

    def uid(self, *parts: object) -> str:
        return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(self.seed), *map(str, parts)]))

    def copy(self, sample: str, kind: str, corrected: bool) -> FileDataset:
        """Return the sample with this kind's UIDs and the bad files' patient."""
        ds = _sample(sample)
        ds.SOPInstanceUID = self.uid(kind, "instance")
        ds.SeriesInstanceUID = self.uid(kind, "series")
        ds.StudyInstanceUID = self.study_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
        ds.PatientID = PATIENT_ID
        ds.PatientName = NAME_BEFORE if corrected else NAME_AFTER
        ds.AccessionNumber = PATIENT_ID
        for keyword in _STALE_PATIENT_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        # Group lengths outside the File Meta are retired and would be wrong after the edits.
        for tag in [tag for tag in ds.keys() if tag.element == 0]:
            del ds[tag]
        return ds

    def path(self, rel_path: str) -> Path:
        path = self.folder / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, kind: str, rel_path: str, description: str, expected: Expected,
            ds: Dataset | None = None, transfer_syntax: str | None = None, corrected: bool = False,
            expected_as_root: Expected | None = None, legacy_rel_path: str | None = None) -> None:
        """Record the spec of a file; with ``ds``, its UIDs and a legacy row that names ``legacy_rel_path``.

        ``legacy_rel_path`` defaults to ``rel_path``.
        """
        uids: dict[str, str | None] = {"sop_instance_uid": None, "sop_class_uid": None,
                                       "series_uid": None}
        if ds is not None:
            uids = {"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                    "series_uid": str(ds.SeriesInstanceUID)}
            legacy_rel_path = legacy_rel_path or rel_path
        self.specs.append(BadFileSpec(
            kind=kind, rel_path=rel_path, description=description, expected=expected,
            expected_as_root=expected_as_root, study_uid=self.study_uid if ds is not None else None,
            transfer_syntax=transfer_syntax, corrections=dict(CORRECTION) if corrected else {},
            legacy_rel_path=legacy_rel_path, **uids))


def _sent(destination: str = MAIN) -> Expected:
    return Expected(SENT, destination)


# Files without, or with unusual, File Meta Information.

def _no_file_meta(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "no_file_meta", corrected=True)
    writer.path("no-file-meta.dcm").write_bytes(encode.data_set(ds, implicit=True))
    writer.add("no_file_meta", "no-file-meta.dcm",
          "no preamble and no File Meta Information, an Implicit VR Little Endian data set",
          _sent(), ds, ImplicitVRLittleEndian, corrected=True)

    ds = writer.copy("rtstruct.dcm", "no_file_meta_nonpixel", corrected=False)
    writer.path("no-file-meta-rtstruct.dcm").write_bytes(encode.data_set(ds, implicit=True))
    writer.add("no_file_meta_nonpixel", "no-file-meta-rtstruct.dcm",
          "an RT Structure Set without preamble and File Meta Information, as pydicom's rtstruct.dcm",
          _sent(NONPIXEL), ds, ImplicitVRLittleEndian)

    ds = writer.copy("CT_small.dcm", "no_file_meta_explicit", corrected=False)
    writer.path("no-file-meta-explicit.dcm").write_bytes(encode.data_set(ds, implicit=False))
    writer.add("no_file_meta_explicit", "no-file-meta-explicit.dcm",
          "no preamble and no File Meta Information, an Explicit VR Little Endian data set",
          _sent(), ds, ExplicitVRLittleEndian)

    ds = writer.copy("CT_small.dcm", "no_preamble", corrected=False)
    writer.path("no-preamble.dcm").write_bytes(encode.file_meta(ds.file_meta)
                                          + encode.data_set(ds, implicit=False))
    writer.add("no_preamble", "no-preamble.dcm",
          "File Meta Information without the 128-byte preamble and the DICM prefix",
          _sent(), ds, ExplicitVRLittleEndian)


def _file_meta_implicit(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "file_meta_implicit_vr", corrected=False)
    writer.path("file-meta-implicit-vr.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta_implicit(ds.file_meta) + encode.data_set(ds, implicit=False))
    writer.add("file_meta_implicit_vr", "file-meta-implicit-vr.dcm",
          "File Meta Information encoded in Implicit VR Little Endian, an Explicit VR body",
          _sent(), ds, ExplicitVRLittleEndian)


def _transfer_syntax_mismatch(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "transfer_syntax_mismatch", corrected=True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    writer.path("ts-explicit-body-implicit.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + encode.data_set(ds, implicit=True))
    writer.add("transfer_syntax_mismatch", "ts-explicit-body-implicit.dcm",
          "(0002,0010) says Explicit VR Little Endian, the body is Implicit VR Little Endian; "
          "sent re-encoded in the syntax that (0002,0010) names",
          _sent(), ds, ExplicitVRLittleEndian, corrected=True)

    ds = writer.copy("CT_small.dcm", "transfer_syntax_mismatch_implicit", corrected=False)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    writer.path("ts-implicit-body-explicit.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + encode.data_set(ds, implicit=False))
    writer.add("transfer_syntax_mismatch_implicit", "ts-implicit-body-explicit.dcm",
          "(0002,0010) says Implicit VR Little Endian, the body is Explicit VR Little Endian",
          _sent(), ds, ImplicitVRLittleEndian)


# Retired and rare transfer syntaxes.

def _deflated_and_big_endian(writer: _Writer) -> None:
    for corrected in (False, True):
        suffix = "_corrected" if corrected else ""
        kind = f"deflated{suffix}"
        ds = writer.copy("image_dfl.dcm", kind, corrected)
        rel = f"{kind.replace('_', '-')}.dcm"
        ds.save_as(writer.path(rel), enforce_file_format=True)
        writer.add(kind, rel, "Deflated Explicit VR Little Endian, as pydicom's image_dfl.dcm",
              _sent(), ds, DeflatedExplicitVRLittleEndian, corrected=corrected)

        kind = f"big_endian{suffix}"
        ds = writer.copy("MR_small_bigendian.dcm", kind, corrected)
        rel = f"{kind.replace('_', '-')}.dcm"
        ds.save_as(writer.path(rel), enforce_file_format=True)
        writer.add(kind, rel, "Explicit VR Big Endian (retired), as pydicom's MR_small_bigendian.dcm",
              _sent(), ds, ExplicitVRBigEndian, corrected=corrected)


# Odd lengths and undefined-length private sequences.

def _odd_length_values(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "odd_length_values", corrected=False)
    uid = writer.uid("odd_length_values", "instance")
    ds.SOPInstanceUID = uid if len(uid) % 2 else uid[:-1]
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.StudyDescription = "ODD VALUE"
    ds.StationName = "ODDSTAT"
    body = encode.data_set(ds, implicit=False)
    # pydicom pads the values to an even length; the file stores them unpadded. Three odd
    # values make the data set's length odd too.
    uid_bytes = ds.SOPInstanceUID.encode("ascii")
    for tag, vr, value, pad in ((0x00080018, "UI", uid_bytes, b"\x00"),
                                (0x00081030, "LO", b"ODD VALUE", b" "),
                                (0x00081010, "SH", b"ODDSTAT", b" ")):
        body = encode.replace_once(body, encode.explicit_element(tag, vr, value + pad),
                                   encode.explicit_element(tag, vr, value))
    writer.path("odd-length-values.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + body)
    writer.add("odd_length_values", "odd-length-values.dcm",
          "values of odd length without padding: (0008,0018) SOP Instance UID, (0008,1030) Study "
          "Description and (0008,1010) Station Name", _sent(), ds, ExplicitVRLittleEndian)


def _encapsulated(fragments: list[bytes]) -> bytes:
    """Encode encapsulated Pixel Data with an empty Basic Offset Table, lengths as given."""
    items = encode.tag_bytes(encode.ITEM) + struct.pack("<I", 0)
    for fragment in fragments:
        items += encode.tag_bytes(encode.ITEM) + struct.pack("<I", len(fragment)) + fragment
    items += encode.tag_bytes(encode.SEQUENCE_DELIMITER) + struct.pack("<I", 0)
    return encode.explicit_element(0x7FE00010, "OB", items, length=encode.UNDEFINED_LENGTH)


def _j2k_fragments(ds: Dataset) -> list[bytes]:
    return [fragment for fragment in generate_fragments(ds.PixelData)][1:]


def _odd_length_fragment(writer: _Writer) -> None:
    ds = writer.copy("693_J2KI.dcm", "odd_length_j2k_fragment", corrected=True)
    fragments = _j2k_fragments(ds)
    # The sample's codestream has an odd length and one byte of padding, which is dropped.
    if not fragments[-1].endswith(b"\xff\xd9\x00"):
        raise ValueError("693_J2KI.dcm no longer ends its codestream with one byte of padding")
    fragments[-1] = fragments[-1][:-1]
    del ds.PixelData
    header = encode.data_set(ds, implicit=False)
    writer.path("odd-length-j2k-fragment.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + header + _encapsulated(fragments))
    writer.add("odd_length_j2k_fragment", "odd-length-j2k-fragment.dcm",
          "JPEG 2000 whose fragment has an odd length, based on pydicom's 693_J2KI.dcm",
          _sent(), ds, str(ds.file_meta.TransferSyntaxUID), corrected=True)


def _private_sequences(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "private_sequence_undefined_length", corrected=True)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    item = Dataset()
    item.CodeValue = "BAD"
    item.CodingSchemeDesignator = "99BADFILES"
    item.is_undefined_length_sequence_item = True
    block = ds.private_block(0x0009, _PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "SQ", Sequence([item]))
    ds[block.get_tag(0x01)].is_undefined_length = True
    writer.path("private-sq-undefined-length.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + encode.data_set(ds, implicit=True))
    writer.add("private_sequence_undefined_length", "private-sq-undefined-length.dcm",
          "Implicit VR: a private sequence and its item of undefined length, whose VR a reader "
          "cannot look up", _sent(), ds, ImplicitVRLittleEndian, corrected=True)

    ds = writer.copy("CT_small.dcm", "private_un_undefined_length", corrected=False)
    before, after = ds[:0x00090000], ds[0x000A0000:]
    # PS3.5 6.2.2: a UN value of undefined length is a sequence in Implicit VR Little Endian.
    items = (encode.tag_bytes(encode.ITEM) + struct.pack("<I", encode.UNDEFINED_LENGTH)
             + encode.implicit_element(0x00080100, b"BAD ")
             + encode.tag_bytes(encode.ITEM_DELIMITER) + struct.pack("<I", 0)
             + encode.tag_bytes(encode.SEQUENCE_DELIMITER) + struct.pack("<I", 0))
    private = (encode.explicit_element(0x00090010, "LO", _PRIVATE_CREATOR.encode("ascii") + b" ")
               + encode.explicit_element(0x00091001, "UN", items, length=encode.UNDEFINED_LENGTH))
    writer.path("private-un-undefined-length.dcm").write_bytes(
        encode.PREAMBLE + encode.file_meta(ds.file_meta) + encode.data_set(before, implicit=False)
        + private + encode.data_set(after, implicit=False))
    writer.add("private_un_undefined_length", "private-un-undefined-length.dcm",
          "Explicit VR: a private element with VR UN and undefined length, holding a sequence",
          _sent(), ds, ExplicitVRLittleEndian)


# Specific Character Set.

def _character_sets(writer: _Writer) -> None:
    for kind, rel, value, description in (
            ("charset_unknown", "charset-unknown.dcm", b"ISO_IR 999",
             "(0008,0005) names a character set that does not exist, ISO_IR 999"),
            ("charset_malformed", "charset-malformed.dcm", b"ISO-IR 100",
             "(0008,0005) is ISO-IR 100, a misspelling of ISO_IR 100")):
        ds = writer.copy("CT_small.dcm", kind, corrected=True)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.StudyDescription = "SCHÄDEL"
        body = encode.data_set(ds, implicit=False)
        # Both values have the length of ISO_IR 100, so no element moves.
        body = encode.replace_once(body, encode.explicit_element(0x00080005, "CS", b"ISO_IR 100"),
                                   encode.explicit_element(0x00080005, "CS", value))
        writer.path(rel).write_bytes(encode.PREAMBLE + encode.file_meta(ds.file_meta) + body)
        writer.add(kind, rel, description + "; the study description is Latin-1 text", _sent(), ds,
              ExplicitVRLittleEndian, corrected=True)


# Truncated files.

def _part10(ds: FileDataset) -> bytes:
    """Return ``ds`` as pydicom writes a Part 10 file, deflated in a deflated transfer syntax."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _truncated(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "truncated_header", corrected=False)
    data = _part10(ds)
    pixel_offset = data.index(encode.tag_bytes(0x7FE00010) + b"OW")
    writer.path("truncated-header.dcm").write_bytes(data[:pixel_offset - 5])
    writer.add("truncated_header", "truncated-header.dcm",
          "CT_small.dcm cut 5 bytes before Pixel Data, inside the last value of the header",
          Expected(UNREADABLE, reason="truncated file"), ds)

    ds = writer.copy("rtplan.dcm", "truncated_in_sequence", corrected=False)
    data = _part10(ds)
    writer.path("truncated-in-sequence.dcm").write_bytes(data[:len(data) * 4 // 5])
    writer.add("truncated_in_sequence", "truncated-in-sequence.dcm",
          "an RT Plan cut inside a sequence, as pydicom's rtplan_truncated.dcm",
          Expected(UNREADABLE, reason="truncated file"), ds)

    ds = writer.copy("MR_small.dcm", "pixel_data_short", corrected=False)
    del ds[0xFFFCFFFC]  # (FFFC,FFFC) Data Set Trailing Padding, so the cut falls in Pixel Data
    data = _part10(ds)
    writer.path("pixel-data-short.dcm").write_bytes(data[:-62])
    writer.add("pixel_data_short", "pixel-data-short.dcm",
          "Pixel Data 62 bytes shorter than its declared length, as pydicom's MR_truncated.dcm",
          Expected(UNREADABLE, reason="Pixel Data"), ds)

    ds = writer.copy("image_dfl.dcm", "truncated_deflated", corrected=False)
    data = _part10(ds)
    writer.path("truncated-deflated.dcm").write_bytes(data[:-50])
    writer.add("truncated_deflated", "truncated-deflated.dcm",
          "a deflated data set whose zlib stream is cut 50 bytes before its end",
          Expected(UNREADABLE, reason="cannot be inflated"), ds)

    ds = writer.copy("693_J2KI.dcm", "encapsulated_pixel_data_short", corrected=False)
    data = _part10(ds)
    writer.path("encapsulated-pixel-data-short.dcm").write_bytes(data[:-100])
    writer.add("encapsulated_pixel_data_short", "encapsulated-pixel-data-short.dcm",
          "JPEG 2000 cut inside its fragment: no Sequence Delimitation Item",
          Expected(UNREADABLE, reason="Pixel Data"), ds)


# Files that are no DICOM instance.

def _not_instances(writer: _Writer) -> None:
    writer.path("empty.dcm").write_bytes(b"")
    writer.add("empty", "empty.dcm", "zero bytes", Expected(UNREADABLE, reason="empty file"))

    writer.path("not-dicom.dcm").write_bytes(b"Legacy PACS export log\r\nExport job 4711 failed\r\n" * 8)
    writer.add("not_dicom", "not-dicom.dcm", "a text file with a .dcm name",
          Expected(UNREADABLE, reason="not a DICOM Part 10 file"))

    source = find_sample("dicomdirtests/DICOMDIR")
    if source is None:
        raise FileNotFoundError("pydicom's sample dicomdirtests/DICOMDIR is missing; reinstall pydicom")
    shutil.copyfile(source, writer.path("media/DICOMDIR"))
    writer.add("dicomdir", "media/DICOMDIR", "a DICOMDIR, pydicom's dicomdirtests/DICOMDIR",
          Expected(UNREADABLE, reason="DICOMDIR (media directory), not an image"))


# Permissions and symbolic links.

def _permissions(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "no_read_permission", corrected=False)
    path = writer.path("no-read-permission.dcm")
    ds.save_as(path, enforce_file_format=True)
    os.chmod(path, 0)
    writer.add("no_read_permission", "no-read-permission.dcm", "mode 000: the migrator's user cannot read it",
          Expected(UNREADABLE, reason="Permission denied"), ds, ExplicitVRLittleEndian,
          expected_as_root=_sent())

    ds = writer.copy("CT_small.dcm", "folder_no_permission", corrected=False)
    folder = writer.folder / "locked"
    ds.save_as(writer.path("locked/in-locked-folder.dcm"), enforce_file_format=True)
    os.chmod(folder, 0)
    writer.add("folder_no_permission", "locked/in-locked-folder.dcm",
          "a readable file in a folder of mode 000, which the migrator's user cannot list",
          Expected(NOT_INDEXED, reason="cannot list the folder: Permission denied"), ds,
          ExplicitVRLittleEndian, expected_as_root=_sent())


def _links(writer: _Writer) -> None:
    ds = writer.copy("CT_small.dcm", "control", corrected=True)
    ds.save_as(writer.path("control.dcm"), enforce_file_format=True)
    writer.add("control", "control.dcm", "an ordinary copy of CT_small.dcm, for comparison",
          _sent(), ds, ExplicitVRLittleEndian, corrected=True)

    links = writer.folder / "links"
    links.mkdir()
    (links / "to-control.dcm").symlink_to("../control.dcm")
    # The link's UIDs are the target's, and the legacy database references the target.
    writer.add("symlink_inside_root", "links/to-control.dcm",
          "a symbolic link to a file inside the root: indexed under its own name, a duplicate",
          Expected(SINBINNED, reason="duplicate"), ds, ExplicitVRLittleEndian,
          legacy_rel_path="control.dcm")

    ds = writer.copy("CT_small.dcm", "outside", corrected=False)
    writer.outside.mkdir(parents=True, exist_ok=True)
    ds.save_as(writer.outside / "outside.dcm", enforce_file_format=True)
    (writer.outside / "folder").mkdir(exist_ok=True)
    ds.save_as(writer.outside / "folder" / "outside.dcm", enforce_file_format=True)
    not_followed = Expected(NOT_INDEXED, reason="not followed")
    for name, target, description in (
            ("out-of-root-file.dcm", writer.outside.resolve() / "outside.dcm",
             "a symbolic link to a DICOM file outside the storage root"),
            ("out-of-root-folder", writer.outside.resolve() / "folder",
             "a symbolic link to a folder outside the storage root"),
            ("loop-a.dcm", Path("loop-b.dcm"), "a symbolic link loop: loop-a.dcm -> loop-b.dcm"),
            ("loop-b.dcm", Path("loop-a.dcm"), "a symbolic link loop: loop-b.dcm -> loop-a.dcm"),
            ("parent", Path(".."), "a symbolic link to its own parent folder"),
            ("broken.dcm", Path("missing.dcm"), "a symbolic link to a file that does not exist")):
        (links / name).symlink_to(target)
        writer.add(f"symlink_{name.split('.')[0].replace('-', '_')}", f"links/{name}", description,
              not_followed)


# Large multi-frame images.

def write_multiframe(path: Path, frames: int, seed: int = 1, study_uid: str | None = None) -> BadFileSpec:
    """Write an uncompressed multi-frame image of ``frames`` 512 x 512 frames of 16 bits.

    The header is CT_small.dcm's as Multi-frame Grayscale Word Secondary
    Capture, with the bad files' patient and a Patient Name that the legacy
    database corrects. The Pixel Data value is a hole in a sparse file, which
    reads as zeros. So a file of several hundred MB takes no time and no disk
    space to write. The spec's ``rel_path`` is the file name.
    """
    writer = _Writer(path.parent, path.parent, seed, study_uid or _study_uid(seed))
    ds = writer.copy("CT_small.dcm", f"multiframe_{frames}", corrected=True)
    for tag in [tag for tag in ds.keys() if tag >= 0x7FE00000]:
        del ds[tag]  # Pixel Data and the trailing padding after it
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    ds.FrameTime = 40
    length = frames * FRAME_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(encode.PREAMBLE + encode.file_meta(ds.file_meta) + encode.data_set(ds, implicit=False))
        out.write(encode.explicit_element(0x7FE00010, "OW", b"", length=length))
        out.truncate(out.tell() + length)
    writer.add("multiframe", path.name,
          f"an uncompressed multi-frame image of {frames} frames, {length // 2**20} MiB",
          _sent(), ds, ExplicitVRLittleEndian, corrected=True)
    return writer.specs[0]


def _multiframe(writer: _Writer, frames: int) -> None:
    writer.specs.append(write_multiframe(writer.path("multiframe.dcm"), frames, writer.seed, writer.study_uid))


def _study_uid(seed: int) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), "study"]))


def write_bad_files(folder: Path, outside: Path, seed: int = 1, frames: int = 16) -> list[BadFileSpec]:
    """Write one small file of each bad or odd kind into ``folder`` and return their specs.

    Parameters
    ----------
    folder
        A new or empty folder inside a storage root.
    outside
        A folder outside every storage root. It receives the DICOM file and
        the folder that two of the symbolic links in ``folder`` point to.
    seed
        Seed of the UIDs: the same seed gives the same files.
    frames
        Frames of the multi-frame image, 512 KiB each.

    Raises
    ------
    FileExistsError
        ``folder`` is not empty.
    ValueError
        ``outside`` is inside ``folder``, or the other way round.
    """
    folder, outside = Path(folder), Path(outside)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give a new or empty folder")
    if outside.resolve().is_relative_to(folder.resolve()) or folder.resolve().is_relative_to(
            outside.resolve()):
        raise ValueError(f"{outside} must be outside {folder}, and outside every storage root")
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, outside, seed, _study_uid(seed))
    _no_file_meta(writer)
    _file_meta_implicit(writer)
    _transfer_syntax_mismatch(writer)
    _deflated_and_big_endian(writer)
    _odd_length_values(writer)
    _odd_length_fragment(writer)
    _private_sequences(writer)
    _character_sets(writer)
    _truncated(writer)
    _not_instances(writer)
    _links(writer)
    _multiframe(writer, frames)
    _permissions(writer)  # last, because nothing can be written into a folder of mode 000
    return writer.specs
