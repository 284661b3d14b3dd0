"""Listing one folder of a storage root and parsing the headers of its files."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from migrator.collisions.hashing import PatientHasher
from migrator.dicom.read import UnreadableFile
from migrator.index.header import read_index_fields


@dataclass(frozen=True)
class FileStat:
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ParsedFile:
    """A file's index fields, or the reason it could not be parsed."""

    rel_path: str
    folder: str
    size: int
    mtime_ns: int
    fields: dict[str, object]
    parse_error: str | None


def list_folder(root: Path, folder: str, real_root: Path,
                skipped_links: list[str]) -> tuple[list[FileStat], list[str]]:
    """Return the files of ``folder`` (relative to ``root``) in name order, and its subfolders.

    ``real_root`` is ``root.resolve()``. A symbolic link to a file inside
    the root is listed under the link's name. Other links (to folders, out
    of the root, broken, or in a loop) are not followed, so a link loop or
    a link out of the root cannot make a walk leave the root or never end.
    They are appended to ``skipped_links``. Entries that are neither files,
    folders nor links (pipes, sockets, devices) are left out, and so is a
    file deleted while the folder is listed.

    Raises
    ------
    OSError
        The folder cannot be listed; :func:`folder_error` words the message.
    """
    files: list[FileStat] = []
    subfolders: list[str] = []
    with os.scandir(root / folder) as entries:
        for entry in entries:
            rel = f"{folder}/{entry.name}" if folder else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    files.append(FileStat(entry.name, stat.st_size, stat.st_mtime_ns))
                elif entry.is_symlink():
                    target = _link_target_stat(entry, real_root, skipped_links)
                    if target is not None:
                        files.append(FileStat(entry.name, target.st_size, target.st_mtime_ns))
            except FileNotFoundError:
                continue  # deleted since the folder was listed
    return sorted(files, key=lambda f: f.name), subfolders


def _link_target_stat(entry: os.DirEntry[str], real_root: Path,
                      skipped_links: list[str]) -> os.stat_result | None:
    """Return the stat of a link's target if it is a file inside the root; else record why not."""
    try:
        target = Path(entry.path).resolve(strict=True)
    except RuntimeError:  # Python before 3.13 raises it for a loop, later versions OSError ELOOP
        skipped_links.append(f"{entry.path}: symbolic link loop; not followed")
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            skipped_links.append(f"{entry.path}: symbolic link loop; not followed")
        else:
            skipped_links.append(f"{entry.path}: symbolic link whose target cannot be reached "
                                 f"({exc.strerror or exc}); not followed")
        return None
    if not target.is_relative_to(real_root):
        reason = f"symbolic link to {target}, outside the root; not followed"
    elif target.is_dir():
        reason = f"symbolic link to the folder {target}; links to folders are not followed"
    elif not target.is_file():
        reason = f"symbolic link to {target}, which is no regular file; not followed"
    else:
        return entry.stat()
    skipped_links.append(f"{entry.path}: {reason}")
    return None


def folder_error(root: Path, folder: str, exc: OSError) -> str:
    """Return the plan's message for a folder that cannot be listed."""
    return f"{root / folder}: cannot list the folder: {exc.strerror or exc}"


def storable(path: str) -> str:
    """Return ``path`` as the index stores it.

    A name that is not valid UTF-8 (Python keeps its bad bytes as
    surrogates) cannot be stored in a text column, so its bad bytes are
    written as ``\\xNN`` escapes.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def parse_folder(root: str, folder: str, files: list[FileStat], hasher: PatientHasher) -> list[ParsedFile]:
    """Parse the header of each file; runs in a planning pool process or a Celery worker.

    ``hasher`` turns the Patient ID and Patient Name into the keyed hashes that the index stores.
    """
    parsed = []
    for stat in files:
        rel_path = f"{folder}/{stat.name}" if folder else stat.name
        stored = storable(rel_path)
        fields: dict[str, object] = {}
        error = None
        if stored != rel_path:
            error = ("the path is not valid UTF-8; rename the file or folder to UTF-8 "
                     "and run 'migrator plan' again")
        else:
            try:
                fields = read_index_fields(Path(root) / rel_path, hasher)
            except UnreadableFile as exc:
                error = str(exc)
        parsed.append(ParsedFile(stored, storable(folder), stat.size, stat.mtime_ns, fields, error))
    return parsed


def parse_folder_timed(root: str, folder: str, files: list[FileStat],
                       hasher: PatientHasher) -> tuple[list[ParsedFile], float]:
    """Run :func:`parse_folder` and return its result with the CPU seconds it took in this process."""
    started = time.process_time()
    parsed = parse_folder(root, folder, files, hasher)
    return parsed, time.process_time() - started
