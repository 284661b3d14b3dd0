"""The measurements of a benchmark run, as plain data that the report and the JSON file share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PlanMeasure:
    """One ``migrator plan`` over the generated archive."""

    run: str
    state: str
    processes: int
    files: int
    seconds: float
    cpu_seconds: float
    #: Largest resident set size of any process of the plan's process tree, in KiB.
    max_rss_kib: int
    #: The indexing phase as ``migrator plan`` reports it: walk, parse and
    #: database writes, without the interpreter's start, the collision check
    #: or cutting batches. None if the plan printed no such line.
    index_seconds: float | None = None
    index_cpu_seconds: float | None = None

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def files_per_cpu_second(self) -> float:
        return self.files / self.cpu_seconds if self.cpu_seconds else 0.0

    @property
    def index_files_per_cpu_second(self) -> float | None:
        return self.files / self.index_cpu_seconds if self.index_cpu_seconds else None


@dataclass
class Spread:
    """Study arrival spread at the main and non-pixel destinations, in seconds."""

    studies: int
    median: float | None
    p95: float | None
    max: float | None


@dataclass
class RunResult:
    """One contender sending the archive to one receiver."""

    #: The name ``--only`` takes: storescu, embedded, dcmsend, dry-run, celery or folder.
    contender: str
    label: str
    receiver: str
    #: "sqlite" or "postgresql" for a migrator run, None for storescu.
    state: str | None = None
    #: False when this migrator lacks the feature, and then ``note`` gives the reason.
    available: bool = True
    note: str = ""
    #: Files stored at the receiver by the measured phase, and their bytes on disk.
    instances: int = 0
    bytes: int = 0
    #: Wall-clock seconds of the measured phase: storescu, or ``migrator start``.
    seconds: float | None = None
    #: User and system CPU seconds of the contender's processes (not the receiver's).
    cpu_seconds: float | None = None
    receiver_cpu_seconds: float | None = None
    #: 1-minute load average just before the measured phase.
    load_average: float | None = None
    #: Each way the run disagrees with the manifest or the receiver; empty for a valid run.
    problems: list[str] = field(default_factory=list)
    #: Reason -> C-STORE attempts that failed before the instance's final outcome, such as
    #: transient failures that an automatic retry repeated. They do not make a run invalid.
    failed_attempts: dict[str, int] = field(default_factory=dict)
    spread: Spread | None = None
    plan: PlanMeasure | None = None
    #: Table -> bytes of the PostgreSQL state database after the run, as left and after VACUUM FULL.
    state_sizes: dict[str, int] | None = None
    state_sizes_vacuumed: dict[str, int] | None = None

    @property
    def valid(self) -> bool:
        return self.available and not self.problems and self.seconds is not None

    @property
    def images_per_second(self) -> float | None:
        """Return the stored files per second, also for an invalid run; None if nothing was measured."""
        if not self.available or not self.seconds:
            return None
        return self.instances / self.seconds

    @property
    def cpu_per_image(self) -> float | None:
        if not self.available or self.cpu_seconds is None or not self.instances:
            return None
        return self.cpu_seconds / self.instances


@dataclass
class BaselineMeasure:
    """``pydicom.dcmread(stop_before_pixels=True)`` over every file, in one process."""

    files: int
    seconds: float
    cpu_seconds: float

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def files_per_cpu_second(self) -> float:
        return self.files / self.cpu_seconds if self.cpu_seconds else 0.0


@dataclass
class ScaleMeasure:
    """``migrator plan`` over a state database with synthetic index rows."""

    rows: int
    folders: int
    #: The first plan: a walk that finds every file unchanged, then cutting every row into batches.
    cut_seconds: float
    cut_cpu_seconds: float
    cut_max_rss_kib: int
    batches: int
    #: The second plan: the same walk, with nothing left to cut.
    replan_seconds: float
    replan_cpu_seconds: float
    replan_max_rss_kib: int
    #: Seconds to insert the rows with COPY, before the plans.
    insert_seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass
class ProfileMeasure:
    """The shares of the CPU samples of one ``migrator start`` under py-spy, per pipeline step."""

    root: str
    files: int
    samples: int
    #: Step -> share of the samples, from 0 to 1.
    shares: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class BenchResults:
    started: str
    finished: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    baseline: BaselineMeasure | None = None
    scale: list[ScaleMeasure] = field(default_factory=list)
    profile: ProfileMeasure | None = None
    load_average_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_average_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    command: str = ""

    def anchor(self, receiver: str) -> RunResult | None:
        """Return the valid storescu run to ``receiver``, which the other rows are compared with."""
        for run in self.runs:
            if run.contender == "storescu" and run.receiver == receiver and run.valid:
                return run
        return None

    def ratio(self, run: RunResult) -> float | None:
        """Return the run's images/s divided by the storescu anchor's, or None without either."""
        anchor = self.anchor(run.receiver)
        rate = run.images_per_second
        if anchor is None or rate is None or not anchor.images_per_second:
            return None
        return rate / anchor.images_per_second

    def plans(self) -> list[PlanMeasure]:
        return [run.plan for run in self.runs if run.plan is not None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResults:
        """Rebuild the results that :meth:`to_json` wrote, for example from bench-results.json."""
        runs = []
        for run in data["runs"]:
            spread = Spread(**run["spread"]) if run.get("spread") else None
            plan = PlanMeasure(**run["plan"]) if run.get("plan") else None
            runs.append(RunResult(**{**run, "spread": spread, "plan": plan}))
        baseline = BaselineMeasure(**data["baseline"]) if data.get("baseline") else None
        profile = ProfileMeasure(**data["profile"]) if data.get("profile") else None
        return cls(**{**data, "runs": runs, "baseline": baseline, "profile": profile,
                      "scale": [ScaleMeasure(**measure) for measure in data.get("scale", [])],
                      "load_average_start": tuple(data["load_average_start"]),
                      "load_average_end": tuple(data["load_average_end"])})
