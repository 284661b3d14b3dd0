"""Walking a storage root folder by folder on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from migrator.index.folder import FileStat, folder_error, list_folder


def iter_folders(root: Path, errors: list[str],
                 skipped_links: list[str]) -> Iterator[tuple[str, list[FileStat]]]:
    """Yield (folder relative to ``root``, its files) depth first, in name order.

    A folder that cannot be listed is appended to ``errors`` with the
    reason. Links that are not followed are appended to ``skipped_links``
    (see :func:`migrator.index.folder.list_folder`).
    """
    real_root = root.resolve()
    stack = [""]
    while stack:
        folder = stack.pop()
        try:
            files, subfolders = list_folder(root, folder, real_root, skipped_links)
        except OSError as exc:
            errors.append(folder_error(root, folder, exc))
            continue
        # Empty folders are yielded too, so files deleted from them are noticed.
        yield folder, files
        stack.extend(sorted(subfolders, reverse=True))
