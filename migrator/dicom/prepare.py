"""Preparing the Part 10 file that a C-STORE sends: as stored, or with a new header.

Only the header is parsed: reading stops before Pixel Data, so pixels are
never decoded, re-encoded or even read into memory. When the corrections
change nothing, the stored file is sent as it is. When they change header
values, a new file is written to a scratch folder. It contains the File Meta
Information and the corrected data set up to Pixel Data, encoded in the
stored transfer syntax. The stored file's bytes from the Pixel Data element
to the end follow unchanged, so Pixel Data and whatever follows it arrive
byte for byte as stored.

Some files cannot be spliced that way, and are read whole, corrected and
written again by pydicom (encapsulated Pixel Data is still copied as stored,
never decoded). These are files whose data set is deflated (one zlib
stream, so the header has no byte offset of its own), files whose data set
is not encoded in their (0002,0010) Transfer Syntax UID, files with a
transfer syntax that pydicom does not know, and changes to elements after
Pixel Data.

A destination that does not accept the stored transfer syntax may receive
a decoded copy instead (see :mod:`migrator.dicom.decompress`), written from
the prepared file.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

from migrator.dicom.padding import copy_pixel_data
from migrator.dicom.read import (
    PIXEL_TAGS,
    SendHeader,
    read_instance,
    read_send_header,
    transfer_syntax_of,
)
from migrator.steps import Change

LOGGER = logging.getLogger(__name__)

#: Runs the correction steps on a data set and returns what they changed.
Corrections = Callable[[Dataset], list[Change]]

#: The 128-byte preamble and the "DICM" prefix of a Part 10 file.
PREAMBLE = b"\x00" * 128 + b"DICM"
_SHARED_MEMORY = Path("/dev/shm")
#: Larger files go to the temporary folder on disk: a file in /dev/shm is
#: memory until it is deleted, next to the stored file in the page cache.
_MEMORY_MAX_BYTES = 64 * 2**20
_PREFIX = "migrator-send-"


class EncodeError(Exception):
    """The corrected data set cannot be written. The message gives the reason."""


class Method(str, enum.Enum):
    """Origin of the file to send: the stored file, or one written for sending."""

    #: The stored file, unchanged.
    AS_STORED = "as stored"
    #: A new header before the stored bytes from Pixel Data on.
    SPLICED = "spliced"
    #: The whole file written again by pydicom.
    REWRITTEN = "rewritten"
    #: A copy with decoded Pixel Data in Explicit VR Little Endian.
    DECOMPRESSED = "decompressed"


@dataclass(frozen=True)
class PreparedFile:
    """A Part 10 file ready to send, and the header changes it carries."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    changes: list[Change]
    method: Method

    def discard(self) -> None:
        """Delete the file if it was written for sending. A stored file is never touched."""
        if self.method is not Method.AS_STORED:
            self.path.unlink(missing_ok=True)


class ScratchFolder:
    """A temporary folder for rewritten files, in memory (/dev/shm) when the system has it.

    A file that does not fit in /dev/shm, or is larger than 64 MiB, is
    written to the default temporary folder instead. Use as a context
    manager: both folders are removed at the end.
    """

    def __init__(self) -> None:
        self._folders: list[tempfile.TemporaryDirectory[str]] = []
        self._memory: Path | None = None
        self._disk: Path | None = None

    def __enter__(self) -> ScratchFolder:
        if _SHARED_MEMORY.is_dir() and os.access(_SHARED_MEMORY, os.W_OK | os.X_OK):
            remove_stale_folders(_SHARED_MEMORY, _PREFIX)
            self._memory = self._make(_SHARED_MEMORY)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for folder in self._folders:
            folder.cleanup()
        self._folders.clear()

    def _make(self, parent: Path | None) -> Path:
        if parent is None:
            remove_stale_folders(Path(tempfile.gettempdir()), _PREFIX)
        folder = tempfile.TemporaryDirectory(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent)
        self._folders.append(folder)
        return Path(folder.name)

    def write(self, writer: Callable[[Path], None], size: int = 0) -> Path:
        """Create a new file of about ``size`` bytes, let ``writer`` fill it and return its path."""
        if self._memory is not None and size <= _MEMORY_MAX_BYTES:
            path = self._new_file(self._memory)
            try:
                writer(path)
                return path
            except OSError as exc:
                path.unlink(missing_ok=True)
                if exc.errno != errno.ENOSPC:
                    raise
                LOGGER.debug("%s is full; writing to the temporary folder on disk", self._memory)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        if self._disk is None:
            self._disk = self._make(None)
        path = self._new_file(self._disk)
        try:
            writer(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _new_file(folder: Path) -> Path:
        handle, name = tempfile.mkstemp(suffix=".dcm", dir=folder)
        os.close(handle)
        return Path(name)


def remove_stale_folders(parent: Path, prefix: str) -> None:
    """Delete the folders ``PREFIX<PID>-*`` in ``parent`` whose process no longer runs.

    A killed worker cannot remove its temporary folders, and in /dev/shm
    their files take memory until the next boot.
    """
    for folder in parent.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def prepare_file(path: Path, corrections: Corrections | None, scratch: ScratchFolder) -> PreparedFile:
    """Apply ``corrections`` to the header of ``path`` and return the file to send.

    Without ``corrections`` (the sin bin takes files as stored) or when they
    change nothing, the result is ``path`` itself, unless its File Meta
    Information is missing, cannot be read as stored (no preamble, or not
    Explicit VR Little Endian) or does not match its data set, or a value
    has an odd length (see :mod:`migrator.dicom.padding`).

    Raises
    ------
    UnreadableFile
        The file vanished, cannot be read, or does not parse.
    EncodeError
        The corrected data set cannot be encoded.
    """
    header = read_send_header(path)
    ds = header.dataset
    syntax = transfer_syntax_of(ds)
    changes = corrections(ds) if corrections is not None else []
    if not changes and header.sendable_as_stored and _meta_matches(ds) and not _misencoded(ds, syntax):
        return _prepared(path, ds, syntax, changes, Method.AS_STORED)
    problem = _splice_problem(header, syntax)
    if problem is None:
        if changes:
            drop_group_lengths(ds)
        written = scratch.write(lambda target: _write_spliced(target, header, syntax, path), header.size)
        return _prepared(written, ds, syntax, changes, Method.SPLICED)
    LOGGER.debug("%s: %s; reading and writing the whole file", path, problem)
    full = read_instance(path)
    changes = corrections(full) if corrections is not None else []
    if changes:
        drop_group_lengths(full)
    written = scratch.write(lambda target: _write_whole(target, full), header.size)
    return _prepared(written, full, syntax, changes, Method.REWRITTEN)


def _prepared(path: Path, ds: Dataset, syntax: UID, changes: list[Change], method: Method) -> PreparedFile:
    return PreparedFile(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(syntax), changes, method)


def _splice_problem(header: SendHeader, syntax: UID) -> str | None:
    """Return why the header of this file cannot be replaced in place, or None if it can."""
    ds = header.dataset
    if not syntax.is_transfer_syntax:
        return f"the transfer syntax {syntax} is unknown to pydicom"
    if syntax.is_deflated:
        return "the data set is deflated"
    if _misencoded(ds, syntax):
        return f"the data set is not encoded as its transfer syntax {syntax} says"
    if header.pixel_offset < header.size and max(map(int, ds.keys()), default=0) >= min(PIXEL_TAGS):
        return "an element at or after Pixel Data changed"
    return None


def _misencoded(ds: Dataset, syntax: UID) -> bool:
    """Tell whether the data set was read with another encoding than its transfer syntax's."""
    if not syntax.is_transfer_syntax or syntax.is_deflated:
        return False
    return ds.original_encoding != (syntax.is_implicit_VR, syntax.is_little_endian)


def _meta_matches(ds: FileDataset) -> bool:
    meta = ds.file_meta
    return bool(meta.get("MediaStorageSOPClassUID") == ds.SOPClassUID
                and meta.get("MediaStorageSOPInstanceUID") == ds.SOPInstanceUID)


def build_file_meta(ds: FileDataset, syntax: UID) -> FileMetaDataset:
    """Return the File Meta Information, naming the data set's own SOP Class and Instance UIDs.

    pynetdicom and dcmsend take the C-STORE's Affected SOP Class and Instance
    UIDs from (0002,0002) and (0002,0003), so those must match the data set.
    """
    meta = FileMetaDataset(ds.file_meta)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength  # written again with the new length
    return meta


def drop_group_lengths(ds: Dataset) -> None:
    # Group Length elements (gggg,0000) outside the File Meta Information are
    # retired (PS3.5 7.2) and would be wrong once a value in their group changed.
    for tag in [tag for tag in ds.keys() if tag.element == 0]:
        del ds[tag]


def _write_spliced(target: Path, header: SendHeader, syntax: UID, source: Path) -> None:
    meta = DicomBytesIO()
    meta.is_implicit_VR, meta.is_little_endian = False, True
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    try:
        write_file_meta_info(meta, build_file_meta(header.dataset, syntax), enforce_standard=True)
        write_dataset(body, header.dataset)
    except Exception as exc:  # pydicom raises many kinds for values it cannot encode
        raise EncodeError(f"cannot encode the corrected data set: {type(exc).__name__}: {exc}") from None
    with open(target, "wb") as out, open(source, "rb") as stored:
        out.write(PREAMBLE)
        out.write(meta.getvalue())
        out.write(body.getvalue())
        copy_pixel_data(stored, out, header)


def _write_whole(target: Path, ds: FileDataset) -> None:
    ds.file_meta = build_file_meta(ds, transfer_syntax_of(ds))
    try:
        pydicom.dcmwrite(target, ds, enforce_file_format=True)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many kinds for values it cannot encode
        raise EncodeError(f"cannot encode the data set: {type(exc).__name__}: {exc}") from None
