"""Deciding orphan, superseded, duplicate or matched for each instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from migrator.config import ReconcileOutcome, RootConfig
from migrator.reconcile.legacy import LegacyRow, legacy_values


@dataclass(frozen=True)
class IndexedFile:
    """The fields of one indexed file that reconciliation uses."""

    id: int
    root: str
    rel_path: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Reconciliation:
    outcome: ReconcileOutcome
    #: Keyword -> value in the legacy database (non-empty values only).
    values: dict[str, str] = field(default_factory=dict)
    #: Why the file is not the one the database references, if so.
    detail: str | None = None


class PathMapper:
    """Maps a legacy database path to (root name, relative path)."""

    def __init__(self, roots: list[RootConfig], case_insensitive: bool) -> None:
        self.case_insensitive = case_insensitive
        self.prefixes = [(self._norm(root.legacy_path_prefix or str(root.path)).rstrip("/") + "/",
                          root.name) for root in roots]

    def _norm(self, path: str) -> str:
        path = path.replace("\\", "/")
        return path.casefold() if self.case_insensitive else path

    def map(self, legacy_path: str) -> tuple[str, str] | None:
        normalized = self._norm(legacy_path.strip())
        for prefix, root in self.prefixes:
            if normalized.startswith(prefix):
                return root, str(PurePosixPath(normalized[len(prefix):]))
        return None

    def key(self, root: str, rel_path: str) -> tuple[str, str]:
        return root, self._norm(rel_path)


def reconcile(
    file: IndexedFile,
    row: LegacyRow | None,
    same_uid: list[IndexedFile],
    path_column: str | None,
    mapper: PathMapper,
) -> Reconciliation:
    """Compare one file with its legacy row and the other files sharing its UID.

    Parameters
    ----------
    file
        The instance being migrated.
    row
        Its legacy row, or None when the database has none.
    same_uid
        Every indexed file with the same SOP Instance UID, ``file`` included.
    path_column
        The query's column holding the legacy file path, if it has one.
    mapper
        Turns a legacy path into a storage root and relative path.
    """
    if row is None:
        return Reconciliation(ReconcileOutcome.ORPHAN, detail="no row in the legacy database")
    values = legacy_values(row, path_column)
    others = [other for other in same_uid if other.id != file.id]
    legacy_path = row.get(path_column) if path_column else None
    if legacy_path:
        target = mapper.map(str(legacy_path))
        if target == mapper.key(file.root, file.rel_path):
            return Reconciliation(ReconcileOutcome.MATCHED, values)
        for other in others:
            if target == mapper.key(other.root, other.rel_path):
                return Reconciliation(ReconcileOutcome.DUPLICATE, values,
                                      f"same SOP Instance UID as {other.root}/{other.rel_path}, "
                                      "which the legacy database references")
        return Reconciliation(ReconcileOutcome.SUPERSEDED, values,
                              f"the legacy database references {legacy_path}")
    # Without a path column the first file indexed wins.
    if others and file.id > min(other.id for other in others):
        first = min(others, key=lambda other: other.id)
        return Reconciliation(ReconcileOutcome.DUPLICATE, values,
                              f"same SOP Instance UID as {first.root}/{first.rel_path}, indexed first")
    return Reconciliation(ReconcileOutcome.MATCHED, values)
