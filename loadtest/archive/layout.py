"""The archive's shape: studies, roots, storage days, folders and the scenarios.

A study is stored on one root on one storage day. The legacy PACS writes the
files of a day round-robin over that day's folders, ``YYYY/MM/DD/F000`` to
``F003`` by default as in the demo archive. So a study's instances are spread
over all of them, and each folder mixes the day's studies. Studies go to the
roots in turn, so the roots fill evenly.

Every count is exact for a given specification: ``round(rate * instances)``
instances are orphans, duplicates and mismatches, ``round(rate * studies)``
studies are merged, and ``round(rate * instances)`` instances are non-pixel
objects (at most all but one). The same specification and seed always give
the same plan.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)

from loadtest.archive.people import MISMATCH_KINDS, Patient, make_patient, stale_patient
from migrator.demo.archive import FOLDERS_PER_DAY

_UID_NAMESPACE = "pacs-migrator-loadtest"

#: Share of studies that belong to a patient who already has a study.
RETURNING_PATIENT_SHARE = 0.15
#: A study with fewer images than this has one image series, larger ones up to three.
MIN_IMAGES_FOR_SERIES_SPLIT = 30

_STUDY_DESCRIPTIONS = ("CT HEAD WITHOUT CONTRAST", "CT BRAIN", "CT HEAD TRAUMA",
                       "CT HEAD ANGIO", "CT SKULL BASE")
_SERIES_DESCRIPTIONS = ("5mm Plain", "2.5mm Brain", "1.25mm Bone", "3mm Soft Tissue")

#: Kinds of series: CT images, Basic Text SR reports and Key Object Selection documents.
CT, SR, KO = "CT", "SR", "KO"
SOP_CLASS_BY_KIND = {CT: CTImageStorage, SR: BasicTextSRStorage, KO: KeyObjectSelectionDocumentStorage}
TRANSFER_SYNTAX_BY_KIND = {CT: JPEG2000Lossless, SR: ExplicitVRLittleEndian, KO: ExplicitVRLittleEndian}


@dataclass(frozen=True)
class ArchiveSpec:
    """The archive to generate. Rates are shares between 0 and 1."""

    instances: int = 20_000
    roots: int = 11
    seed: int = 1
    #: Share of instances that are SRs or Key Object Selection documents.
    nonpixel_rate: float = 0.02
    #: Share of instances whose header disagrees with the database about the patient.
    mismatch_rate: float = 0.02
    #: Share of instances whose database row was deleted.
    orphan_rate: float = 0.005
    #: Share of instances stored in two files, of which the database references one.
    duplicate_rate: float = 0.005
    #: Share of studies whose instances the database moved into another study.
    merged_rate: float = 0.01
    #: Mean instances per study; study sizes vary from 0.4 to 1.6 times this.
    instances_per_study: int = 150
    #: Folders per storage day that a root's files are striped over.
    folders_per_day: int = FOLDERS_PER_DAY
    #: Studies a root stores on one day before it moves on to a later day.
    studies_per_day: int = 3
    #: Distinct JPEG 2000 frames the CT images cycle through.
    frames: int = 5

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        for name in ("instances", "roots", "instances_per_study", "folders_per_day",
                     "studies_per_day", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("nonpixel_rate", "mismatch_rate", "orphan_rate", "duplicate_rate", "merged_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.nonpixel_rate == 1.0:
            raise ValueError("nonpixel_rate must be below 1, since every study needs an image")
        total = self.mismatch_rate + self.orphan_rate + self.duplicate_rate
        if total > 1.0:
            raise ValueError(f"mismatch_rate + orphan_rate + duplicate_rate must be at most 1, "
                             f"got {total}, since each instance carries at most one of them")
        if self.roots > 99:
            raise ValueError(f"roots must be at most 99, got {self.roots}")

    @property
    def files(self) -> int:
        """Files to write: one per instance and a second one per duplicate."""
        return self.instances + round(self.duplicate_rate * self.instances)

    @property
    def root_names(self) -> list[str]:
        return [f"share{number:02d}" for number in range(1, self.roots + 1)]


@dataclass(slots=True)
class SeriesPlan:
    number: int
    kind: str
    size: int
    uid: str
    description: str


@dataclass(slots=True)
class StudyPlan:
    """One study, as its file headers describe it.

    ``merged_into`` is the index of the study that the legacy database moved
    this study's instances into; the database has no row for this study.
    """

    index: int
    uid: str
    root: str
    storage_date: str
    time: str
    patient: Patient
    accession_number: str
    description: str
    series: list[SeriesPlan] = field(default_factory=list)
    #: Global index of the study's first instance.
    first_instance: int = 0
    merged_into: int | None = None

    @property
    def size(self) -> int:
        return sum(series.size for series in self.series)


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file to write, with what the legacy database stores for its instance.

    Both files of a duplicate pair share ``instance_index`` and every header
    value. ``legacy_rel_path`` is None for an orphan; otherwise it is the file
    the database's row references, on ``root``.
    """

    root: str
    rel_path: str
    instance_index: int
    study: StudyPlan
    series: SeriesPlan
    #: Position in the series, from 0; the Instance Number is one more.
    position: int
    sop_instance_uid: str
    header_patient: Patient
    mismatch: str | None
    legacy_rel_path: str | None
    #: True for both files of a duplicate pair.
    duplicate: bool

    @property
    def sop_class_uid(self) -> str:
        return str(SOP_CLASS_BY_KIND[self.series.kind])

    @property
    def transfer_syntax(self) -> str:
        return str(TRANSFER_SYNTAX_BY_KIND[self.series.kind])


@dataclass(frozen=True)
class Scenarios:
    """Global instance indices that carry each instance-level scenario."""

    orphans: frozenset[int]
    duplicates: frozenset[int]
    #: Instance index -> one of MISMATCH_KINDS.
    mismatches: dict[int, str]


@dataclass
class ArchivePlan:
    spec: ArchiveSpec
    studies: list[StudyPlan]
    scenarios: Scenarios

    @property
    def merged_studies(self) -> list[StudyPlan]:
        return [study for study in self.studies if study.merged_into is not None]


def make_uid(seed: int, *parts: object) -> str:
    """Return a UID that depends only on the seed and ``parts``."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), *map(str, parts)]))


def split(total: int, parts: int, rng: random.Random, minimum: int = 1) -> list[int]:
    """Split ``total`` into ``parts`` random sizes of at least ``minimum``, 0.4 to 1.6 times the mean.

    The largest remainder method makes the sizes add up to ``total`` exactly.
    """
    spare = total - minimum * parts
    if spare < 0:
        raise ValueError(f"cannot split {total} into {parts} parts of at least {minimum}")
    weights = [rng.uniform(0.4, 1.6) for _ in range(parts)]
    scale = spare / sum(weights)
    exact = [weight * scale for weight in weights]
    sizes = [int(value) for value in exact]
    by_remainder = sorted(range(parts), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[:spare - sum(sizes)]:
        sizes[i] += 1
    return [size + minimum for size in sizes]


def _nonpixel_counts(sizes: list[int], count: int, rng: random.Random) -> list[int]:
    """Spread ``count`` non-pixel objects over studies in proportion to their size.

    Each study keeps at least one image. There is room for that because the
    caller leaves at least as many images as studies.
    """
    counts = [0] * len(sizes)
    cumulative = list(itertools.accumulate(sizes))
    for _ in range(count):
        study = bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))
        if counts[study] >= sizes[study] - 1:
            roomy = [i for i, size in enumerate(sizes) if counts[i] < size - 1]
            study = rng.choice(roomy)
        counts[study] += 1
    return counts


def _storage_days(studies: int, roots: list[str], studies_per_day: int,
                  rng: random.Random) -> list[tuple[str, str]]:
    """Return (root, YYYYMMDD) for each study: roots in turn, later days as a root fills."""
    first_day = date(2015, 1, 5)
    day_of_root = {root: first_day + timedelta(days=rng.randrange(0, 7)) for root in roots}
    stored_on_day = dict.fromkeys(roots, 0)
    placements = []
    for index in range(studies):
        root = roots[index % len(roots)]
        if stored_on_day[root] == studies_per_day:
            day_of_root[root] += timedelta(days=rng.randint(1, 3))
            stored_on_day[root] = 0
        stored_on_day[root] += 1
        placements.append((root, day_of_root[root].strftime("%Y%m%d")))
    return placements


def _plan_studies(spec: ArchiveSpec, rng: random.Random) -> list[StudyPlan]:
    # Keep at least one image, because every study needs one.
    nonpixel = min(round(spec.nonpixel_rate * spec.instances), spec.instances - 1)
    images = spec.instances - nonpixel
    count = max(min(spec.roots, images), round(images / spec.instances_per_study), 1)
    sizes = split(spec.instances, count, rng)
    nonpixel_counts = _nonpixel_counts(sizes, nonpixel, rng)
    placements = _storage_days(count, spec.root_names, spec.studies_per_day, rng)

    patients: list[Patient] = []
    studies = []
    first_instance = 0
    for index, (size, nonpixel_count, (root, storage_date)) in enumerate(
            zip(sizes, nonpixel_counts, placements)):
        if patients and rng.random() < RETURNING_PATIENT_SHARE:
            patient = rng.choice(patients)
        else:
            patient = make_patient(len(patients) + 1, rng)
            patients.append(patient)
        study = StudyPlan(
            index=index,
            uid=make_uid(spec.seed, "study", index),
            root=root,
            storage_date=storage_date,
            time=f"{rng.randint(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            patient=patient,
            accession_number=f"LTA{rng.randrange(10**7, 10**8)}",
            description=rng.choice(_STUDY_DESCRIPTIONS),
            first_instance=first_instance,
        )
        image_count = size - nonpixel_count
        series_count = 1 if image_count < MIN_IMAGES_FOR_SERIES_SPLIT else rng.randint(1, 3)
        series_sizes = split(image_count, series_count, rng) if image_count else []
        for number, series_size in enumerate(series_sizes, start=1):
            study.series.append(SeriesPlan(number, CT, series_size,
                                           make_uid(spec.seed, "series", index, number),
                                           _SERIES_DESCRIPTIONS[(number - 1) % len(_SERIES_DESCRIPTIONS)]))
        if nonpixel_count:
            kind = rng.choice((SR, KO))
            number = len(study.series) + 1
            description = "Report" if kind == SR else "Key Images"
            study.series.append(SeriesPlan(number, kind, nonpixel_count,
                                           make_uid(spec.seed, "series", index, number), description))
        studies.append(study)
        first_instance += size
    return studies


def _plan_merges(studies: list[StudyPlan], rate: float, rng: random.Random) -> None:
    """Mark ``round(rate * studies)`` studies as merged into another study.

    A merge goes to another study of the same patient where there is one,
    the usual case of two orders for one examination. Otherwise it goes to
    any unmerged study, as when a study was filed under the wrong patient.
    """
    count = min(round(rate * len(studies)), len(studies) - 1)
    if count <= 0:
        return
    merged = set(rng.sample(range(len(studies)), count))
    targets = [study for study in studies if study.index not in merged]
    for index in sorted(merged):
        same_patient = [target for target in targets
                        if target.patient.patient_id == studies[index].patient.patient_id]
        target = rng.choice(same_patient or targets)
        studies[index].merged_into = target.index


def _plan_scenarios(spec: ArchiveSpec, rng: random.Random) -> Scenarios:
    orphans = round(spec.orphan_rate * spec.instances)
    duplicates = round(spec.duplicate_rate * spec.instances)
    mismatches = round(spec.mismatch_rate * spec.instances)
    picked = rng.sample(range(spec.instances), orphans + duplicates + mismatches)
    return Scenarios(
        orphans=frozenset(picked[:orphans]),
        duplicates=frozenset(picked[orphans:orphans + duplicates]),
        mismatches={index: rng.choice(MISMATCH_KINDS) for index in picked[orphans + duplicates:]},
    )


def plan_archive(spec: ArchiveSpec) -> ArchivePlan:
    """Plan the studies and scenarios of ``spec``; nothing is written.

    Raises
    ------
    ValueError
        If the specification is invalid.
    """
    spec.validate()
    rng = random.Random(f"{_UID_NAMESPACE}/plan/{spec.seed}")
    studies = _plan_studies(spec, rng)
    _plan_merges(studies, spec.merged_rate, rng)
    scenarios = _plan_scenarios(spec, rng)
    return ArchivePlan(spec, studies, scenarios)


class _FolderStriper:
    """Round-robin assignment of files to the folders of their root's storage day."""

    def __init__(self, folders_per_day: int, rng: random.Random) -> None:
        self._folders_per_day = folders_per_day
        self._written: dict[tuple[str, str], int] = {}
        self._rng = rng
        self._names: set[str] = set()

    def next_path(self, root: str, storage_date: str) -> str:
        written = self._written.get((root, storage_date), 0)
        self._written[(root, storage_date)] = written + 1
        day = f"{storage_date[:4]}/{storage_date[4:6]}/{storage_date[6:]}"
        return f"{day}/F{written % self._folders_per_day:03d}/{self._next_name()}"

    def _next_name(self) -> str:
        """Return a legacy-style file name (eight hexadecimal digits), unique in the archive."""
        while True:
            name = f"{self._rng.getrandbits(32):08X}.dcm"
            if name not in self._names:
                self._names.add(name)
                return name


def iter_files(plan: ArchivePlan) -> Iterator[PlannedFile]:
    """Yield every file of the plan, study by study, in the order the legacy PACS wrote them.

    A duplicate's second file follows its first, in the next folder of the same
    day. Which of the two the legacy database references is drawn at random.
    """
    spec = plan.spec
    rng = random.Random(f"{_UID_NAMESPACE}/files/{spec.seed}")
    striper = _FolderStriper(spec.folders_per_day, rng)
    scenarios = plan.scenarios
    temporary_ids = itertools.count(1)
    for study in plan.studies:
        instance_index = study.first_instance
        for series in study.series:
            for position in range(series.size):
                mismatch = scenarios.mismatches.get(instance_index)
                header_patient = study.patient
                if mismatch is not None:
                    header_patient = stale_patient(study.patient, mismatch, rng, next(temporary_ids))
                paths = [striper.next_path(study.root, study.storage_date)]
                duplicate = instance_index in scenarios.duplicates
                if duplicate:
                    paths.append(striper.next_path(study.root, study.storage_date))
                legacy_rel_path: str | None = rng.choice(paths)
                if instance_index in scenarios.orphans:
                    legacy_rel_path = None
                uid = make_uid(spec.seed, "instance", instance_index)
                for rel_path in paths:
                    yield PlannedFile(study.root, rel_path, instance_index, study, series, position,
                                      uid, header_patient, mismatch, legacy_rel_path, duplicate)
                instance_index += 1
