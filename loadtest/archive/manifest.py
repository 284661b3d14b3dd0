"""The manifest: every generated file and the outcome the migrator must record for it.

Two files in the output folder:

- ``manifest-files.jsonl``: one JSON object per file (see :class:`ManifestFile`),
  in the order the files were written;
- ``manifest.json``: the specification, the counts per scenario and per
  expected outcome, destination, reason and reconciliation, and the merged studies.

The expectations follow the migrator's default routing rules. An orphan
(no row) and the unreferenced file of a duplicate pair go to the sin bin with
that reason. Every other file is reconciled as matched and sent, CT images to
``main`` and the SR and KOS documents to ``nonpixel``. Each reconciled keyword
whose legacy value differs from the header is corrected.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from loadtest.archive.layout import CT, ArchivePlan, PlannedFile, StudyPlan
from migrator.demo.archive import RECONCILED_KEYWORDS

SUMMARY_NAME = "manifest.json"
FILES_NAME = "manifest-files.jsonl"
FORMAT_VERSION = 1

ORPHAN = "orphan"
DUPLICATE = "duplicate"
MERGED = "merged"
MISMATCH = "mismatch"
MATCHED = "matched"


@dataclass(frozen=True)
class ManifestFile:
    """One generated file and its expected result."""

    root: str
    #: Relative to the root, with "/" separators, as the migrator's index stores it.
    path: str
    size: int
    sop_instance_uid: str
    #: The Study Instance UID in the header, which a merge does not change.
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    #: "CT", "SR" or "KO".
    kind: str
    #: Any of "orphan", "duplicate", "merged" and "mismatch".
    scenarios: list[str]
    #: "matched", "orphan" or "duplicate".
    reconciliation: str
    #: "main", "nonpixel" or "sinbin".
    destination: str
    #: "sent" or "sinbinned".
    outcome: str
    #: The sin bin reason ("orphan" or "duplicate"); None for files that are sent.
    reason: str | None
    #: Keyword -> the legacy database's value, for each header value the migrator must change.
    corrections: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    summary: dict[str, Any]
    files: list[ManifestFile]


def _header_values(file: PlannedFile) -> dict[str, str]:
    patient = file.header_patient
    return {
        "PatientID": patient.patient_id,
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
        "StudyInstanceUID": file.study.uid,
        "AccessionNumber": file.study.accession_number,
    }


def _legacy_values(study: StudyPlan, plan: ArchivePlan) -> dict[str, str]:
    """Return what the legacy query returns for the instances of ``study``, following a merge."""
    target = plan.studies[study.merged_into] if study.merged_into is not None else study
    patient = target.patient
    return {
        "PatientID": patient.patient_id,
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
        "StudyInstanceUID": target.uid,
        "AccessionNumber": target.accession_number,
    }


def expected_file(file: PlannedFile, size: int, plan: ArchivePlan) -> ManifestFile:
    """Return the manifest entry of ``file``, with the outcome the migrator must record."""
    scenarios = []
    if file.legacy_rel_path is None:
        scenarios.append(ORPHAN)
    if file.duplicate:
        scenarios.append(DUPLICATE)
    if file.study.merged_into is not None:
        scenarios.append(MERGED)
    if file.mismatch is not None:
        scenarios.append(MISMATCH)

    corrections: dict[str, str] = {}
    if file.legacy_rel_path is None:
        reconciliation, destination, outcome, reason = ORPHAN, "sinbin", "sinbinned", ORPHAN
    elif file.legacy_rel_path != file.rel_path:
        # Only duplicates have a row that names another file, and that file exists.
        reconciliation, destination, outcome, reason = DUPLICATE, "sinbin", "sinbinned", DUPLICATE
    else:
        reconciliation, outcome, reason = MATCHED, "sent", None
        destination = "main" if file.series.kind == CT else "nonpixel"
        header = _header_values(file)
        legacy = _legacy_values(file.study, plan)
        corrections = {keyword: legacy[keyword] for keyword in RECONCILED_KEYWORDS
                       if legacy[keyword] != header[keyword]}

    return ManifestFile(
        root=file.root,
        path=file.rel_path,
        size=size,
        sop_instance_uid=file.sop_instance_uid,
        study_instance_uid=file.study.uid,
        series_instance_uid=file.series.uid,
        sop_class_uid=file.sop_class_uid,
        transfer_syntax=file.transfer_syntax,
        kind=file.series.kind,
        scenarios=scenarios,
        reconciliation=reconciliation,
        destination=destination,
        outcome=outcome,
        reason=reason,
        corrections=corrections,
    )


class ManifestWriter:
    """Writes manifest-files.jsonl line by line and counts what it wrote."""

    def __init__(self, folder: Path, plan: ArchivePlan) -> None:
        self._folder = folder
        self._plan = plan
        self._stream: TextIO = (folder / FILES_NAME).open("w", encoding="utf-8")
        self.files = 0
        self.bytes = 0
        self.per_root: dict[str, Counter[str]] = {name: Counter() for name in plan.spec.root_names}
        self.expected: dict[str, Counter[str]] = {
            name: Counter() for name in ("outcome", "destination", "reason", "reconciliation", "kind")}
        self.outcomes: Counter[tuple[str, str, str | None]] = Counter()
        self.scenario_instances: dict[str, set[str]] = {
            name: set() for name in (ORPHAN, DUPLICATE, MERGED, MISMATCH)}

    def add(self, file: PlannedFile, size: int) -> ManifestFile:
        entry = expected_file(file, size, self._plan)
        # vars() instead of asdict(), which deep-copies and took a fifth of the generation time.
        self._stream.write(json.dumps(vars(entry), ensure_ascii=False) + "\n")
        self.files += 1
        self.bytes += size
        self.per_root[entry.root]["files"] += 1
        self.per_root[entry.root]["bytes"] += size
        self.expected["outcome"][entry.outcome] += 1
        self.expected["destination"][entry.destination] += 1
        self.expected["reason"][entry.reason or "none"] += 1
        self.expected["reconciliation"][entry.reconciliation] += 1
        self.expected["kind"][entry.kind] += 1
        self.outcomes[(entry.destination, entry.outcome, entry.reason)] += 1
        for scenario in entry.scenarios:
            self.scenario_instances[scenario].add(entry.sop_instance_uid)
        return entry

    def close(self) -> None:
        """Close manifest-files.jsonl; closing again does nothing."""
        self._stream.close()

    def write_summary(self) -> dict[str, Any]:
        """Close manifest-files.jsonl, write manifest.json and return its content."""
        self.close()
        plan = self._plan
        summary = {
            "format_version": FORMAT_VERSION,
            "spec": asdict(plan.spec),
            "files": self.files,
            "instances": plan.spec.instances,
            "bytes": self.bytes,
            "studies": len(plan.studies),
            "roots": {name: dict(counts) for name, counts in self.per_root.items()},
            # Instances (distinct SOP Instance UIDs) per scenario; "merged" counts
            # the instances of merged studies.
            "scenario_instances": {name: len(uids) for name, uids in self.scenario_instances.items()},
            "merged_studies": [
                {"study_instance_uid": study.uid,
                 "merged_into": plan.studies[study.merged_into].uid}
                for study in plan.merged_studies if study.merged_into is not None
            ],
            # Files per expected outcome, destination, reason, reconciliation and kind.
            "expected": {name: dict(sorted(counts.items())) for name, counts in self.expected.items()},
            # Files per expected (destination, outcome, reason).
            "expected_outcomes": [
                {"destination": destination, "outcome": outcome, "reason": reason, "files": count}
                for (destination, outcome, reason), count in sorted(
                    self.outcomes.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
            ],
            "files_manifest": FILES_NAME,
        }
        (self._folder / SUMMARY_NAME).write_text(
            json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return summary


def read_manifest(folder: Path) -> Manifest:
    """Read the manifest that ``generate`` wrote into ``folder``.

    Raises
    ------
    FileNotFoundError
        If ``folder`` has no manifest.json or manifest-files.jsonl.
    ValueError
        If the manifest has another format version.
    """
    summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    if summary.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / SUMMARY_NAME} has format version {summary.get('format_version')}, "
                         f"expected {FORMAT_VERSION}; generate the archive again")
    with (folder / FILES_NAME).open(encoding="utf-8") as stream:
        files = [ManifestFile(**json.loads(line)) for line in stream]
    return Manifest(summary, files)
