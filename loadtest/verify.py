"""Comparing what a migration recorded with a generated archive's manifest.

A benchmark or test runs ``migrator plan`` and ``migrator start`` on a
generated archive and then calls :func:`compare` to list every file whose
recorded outcome, sin bin reason, reconciliation, destination or header
corrections differ from the manifest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from loadtest.archive.manifest import Manifest, ManifestFile
from migrator.state.models import AuditEntry, Instance, StorageRoot


@dataclass(frozen=True)
class RecordedFile:
    """The state database's record of one indexed file. A field is None where nothing is recorded."""

    outcome: str | None
    #: Reason of the instance's last audit entry, for example "orphan: no row in the legacy database".
    reason: str | None = None
    reconciliation: str | None = None
    destination: str | None = None
    #: Keyword -> new value, from the last audit entry's changes.
    corrections: dict[str, str] = field(default_factory=dict)


def recorded_files(sessions: sessionmaker[Session]) -> dict[tuple[str, str], RecordedFile]:
    """Return (root name, relative path) -> what the state database records for that file."""
    last_audit = (select(func.max(AuditEntry.id).label("id"))
                  .group_by(AuditEntry.instance_id).subquery())
    query = (
        select(StorageRoot.name, Instance.rel_path, Instance.outcome, AuditEntry.reason,
               AuditEntry.reconciliation, AuditEntry.destination, AuditEntry.changes)
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .outerjoin(AuditEntry, AuditEntry.instance_id == Instance.id)
        .where((AuditEntry.id.is_(None)) | AuditEntry.id.in_(select(last_audit.c.id)))
    )
    recorded = {}
    with sessions() as session:
        for root, rel_path, outcome, reason, reconciliation, destination, changes in session.execute(query):
            corrections = {change["keyword"]: change["new"] for change in changes or []}
            recorded[(root, rel_path)] = RecordedFile(outcome, reason, reconciliation, destination,
                                                      corrections)
    return recorded


def _problems_of(expected: ManifestFile, recorded: RecordedFile) -> list[str]:
    where = f"{expected.root}/{expected.path}"
    if recorded.outcome != expected.outcome:
        return [f"{where}: recorded outcome {recorded.outcome}, expected {expected.outcome}"]
    problems = []
    if recorded.destination != expected.destination:
        problems.append(f"{where}: sent to {recorded.destination}, expected {expected.destination}")
    if recorded.reconciliation != expected.reconciliation:
        problems.append(f"{where}: reconciled as {recorded.reconciliation}, "
                        f"expected {expected.reconciliation}")
    if expected.reason and not (recorded.reason or "").startswith(expected.reason):
        problems.append(f"{where}: sin bin reason {recorded.reason!r}, expected {expected.reason}")
    if recorded.corrections != expected.corrections:
        problems.append(f"{where}: corrected {sorted(recorded.corrections)}, "
                        f"expected {sorted(expected.corrections)}")
    return problems


def compare(manifest: Manifest, recorded: dict[tuple[str, str], RecordedFile]) -> list[str]:
    """Return one line per difference between the manifest and the recorded files.

    An empty list means every file of the manifest is indexed, has the
    expected outcome, reason, reconciliation, destination and corrections, and
    no other file is indexed.
    """
    unmatched = dict(recorded)
    problems = []
    for expected in manifest.files:
        found = unmatched.pop((expected.root, expected.path), None)
        if found is None:
            problems.append(f"{expected.root}/{expected.path}: not indexed")
            continue
        problems.extend(_problems_of(expected, found))
    for (root, rel_path), found in sorted(unmatched.items()):
        problems.append(f"{root}/{rel_path}: indexed with outcome {found.outcome} but not in the manifest")
    return problems


def outcome_counts(recorded: dict[tuple[str, str], RecordedFile]) -> Counter[str | None]:
    """Count the recorded files per outcome (None for files without one yet)."""
    return Counter(found.outcome for found in recorded.values())
