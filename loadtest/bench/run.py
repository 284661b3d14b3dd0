"""One benchmark run: generate the archive, run every chosen contender, collect the results."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from loadtest.archive import ArchiveSpec, RunSettings, generate_archive, read_manifest
from loadtest.archive.generate import LEGACY_DB_NAME
from loadtest.bench.contenders import (
    Archive,
    Bench,
    StateKind,
    dcmsend_engine_available,
    dry_run_available,
    run_migrator,
    run_storescu,
)
from loadtest.bench.databases import server_version
from loadtest.bench.indexing import measure_baseline
from loadtest.bench.machine import describe_machine, library_versions
from loadtest.bench.profile import measure_profile
from loadtest.bench.receivers import (
    RECEIVERS,
    Receiver,
    StoreSCPReceiver,
    dcmtk_version,
)
from loadtest.bench.results import BenchResults, RunResult
from loadtest.bench.scale import measure_scale

LOGGER = logging.getLogger(__name__)

#: The contenders and measurements in the order they run, by the name ``--only`` takes.
CONTENDERS = ("storescu", "embedded", "dcmsend", "dry-run", "folder", "celery")
#: The contenders that also run to the second and later receivers. A dry run
#: sends nothing, and folder batches and Celery workers are compared on the
#: first receiver only, which keeps the default run within 15 minutes.
LATER_RECEIVER_CONTENDERS = ("storescu", "embedded", "dcmsend")
MEASUREMENTS = ("indexing", "planner-scale", "profile")
NAMES = CONTENDERS + MEASUREMENTS
RESULTS_NAME = "bench-results.json"
#: Seconds a child process may take per instance, beyond MIN_TIMEOUT_SECONDS.
TIMEOUT_SECONDS_PER_INSTANCE = 0.1
MIN_TIMEOUT_SECONDS = 600.0


@dataclass
class BenchOptions:
    instances: int = 20_000
    #: None: a new temporary folder, removed afterwards unless ``keep``.
    work_dir: Path | None = None
    keep: bool = False
    receivers: list[str] = field(default_factory=lambda: ["storescp", "orthanc"])
    only: list[str] = field(default_factory=lambda: list(NAMES))
    scale_rows: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    redis_url: str = "redis://127.0.0.1:6379/0"
    embedded_state: StateKind = "sqlite"
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    celery_workers: int = 2
    seed: int = 1
    #: The command line, for the record.
    command: str = ""

    def validate(self) -> None:
        """Raise ValueError for an unknown receiver or contender name, or a count below 1."""
        unknown = sorted(set(self.receivers) - set(RECEIVERS))
        if unknown or not self.receivers:
            raise ValueError(f"unknown receiver(s) {unknown or self.receivers}: expected names from "
                             f"{', '.join(RECEIVERS)}")
        unknown = sorted(set(self.only) - set(NAMES))
        if unknown or not self.only:
            raise ValueError(f"unknown contender(s) {unknown or self.only}: expected names from "
                             f"{', '.join(NAMES)}")
        counts = [self.instances, self.processes, self.celery_workers, *self.scale_rows]
        if min(counts) < 1:
            raise ValueError("--instances, --processes, --celery-workers and every --scale-rows value "
                             "must be at least 1")

    @property
    def timeout(self) -> float:
        return MIN_TIMEOUT_SECONDS + self.instances * TIMEOUT_SECONDS_PER_INSTANCE


def _archive(work_dir: Path, options: BenchOptions) -> tuple[Archive, bool]:
    """Generate the archive in ``work_dir/archive``, or reuse one generated there with the same spec.

    Returns the archive and whether this run generated it.
    """
    folder = work_dir / "archive"
    spec = ArchiveSpec(instances=options.instances, seed=options.seed)
    generated = False
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder)
        if manifest.summary["spec"] != asdict(spec):
            raise ValueError(f"{folder} contains an archive of another specification; give another "
                             "--work-dir or remove that folder")
        LOGGER.info("reusing the archive in %s", folder)
    else:
        LOGGER.info("generating %d instances in %s", options.instances, folder)
        generate_archive(folder, spec, RunSettings())
        manifest = read_manifest(folder)
        generated = True
    roots = {name: folder / "roots" / name for name in spec.root_names}
    return Archive(folder, roots, f"sqlite:///{folder / LEGACY_DB_NAME}", manifest), generated


def _data(archive: Archive, options: BenchOptions, storescp_command: str) -> dict[str, object]:
    sizes = [entry.size for entry in archive.files]
    summary = archive.manifest.summary
    return {
        "instances": summary["instances"], "files": summary["files"], "bytes": summary["bytes"],
        "studies": summary["studies"], "roots": len(summary["roots"]), "seed": summary["spec"]["seed"],
        "nonpixel": summary["expected"]["destination"].get("nonpixel", 0),
        "min_kb": min(sizes) / 1e3, "max_kb": max(sizes) / 1e3, "mean_kb": sum(sizes) / len(sizes) / 1e3,
        "processes": options.processes, "embedded_state": options.embedded_state,
        "celery_workers": options.celery_workers, "storescp_command": storescp_command,
    }


def _versions(options: BenchOptions, receivers: list[Receiver]) -> dict[str, str]:
    versions = library_versions()
    versions["DCMTK"] = dcmtk_version()
    for receiver in receivers:
        versions[receiver.software] = receiver.version
    if "celery" in options.only or "planner-scale" in options.only or options.embedded_state == "postgresql":
        versions["PostgreSQL"] = server_version(options.postgres_url).removeprefix("PostgreSQL ")
    if "celery" in options.only:
        client = redis.Redis.from_url(options.redis_url)
        try:
            versions["Redis"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
    return versions


def _unavailable(contender: str, label: str, receiver: str, note: str) -> RunResult:
    return RunResult(contender, label, receiver, available=False, note=note)


def _run_contender(name: str, bench: Bench) -> RunResult:
    receiver = bench.receiver.name
    if name == "storescu":
        return run_storescu(bench)
    if name == "embedded":
        return run_migrator(bench, name, "migrator embedded")
    if name == "folder":
        return run_migrator(bench, name, "migrator embedded, plan --mode folder", mode="folder")
    if name == "dcmsend":
        label = "migrator embedded, engine dcmsend"
        if not dcmsend_engine_available():
            return _unavailable(name, label, receiver, "DestinationConfig has no engine 'dcmsend'")
        return run_migrator(bench, name, label, engine="dcmsend")
    if name == "dry-run":
        label = "migrator embedded, start --dry-run"
        if not dry_run_available():
            return _unavailable(name, label, receiver, "'migrator start' has no --dry-run option")
        return run_migrator(bench, name, label, dry_run=True)
    if name == "celery":
        workers = f"{bench.celery_workers} worker{'s' if bench.celery_workers > 1 else ''}"
        return run_migrator(bench, name, f"migrator Celery, {workers}", celery=True)
    raise ValueError(f"unknown contender {name!r}")


def run_bench(options: BenchOptions, on_result: Callable[[RunResult], None] | None = None) -> BenchResults:
    """Run the benchmark, write its results to bench-results.json in the work dir and return them.

    Raises
    ------
    ValueError
        The options are invalid, or the work dir contains an archive of another specification.
    """
    options.validate()
    started = datetime.now(UTC)
    created = options.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="loadtest-bench-")) if created else Path(options.work_dir or ".")
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    results = BenchResults(started=started.isoformat(timespec="seconds"),
                           load_average_start=os.getloadavg(), command=options.command)
    results.machine = describe_machine(work_dir)
    written: list[Path] = []
    archive_generated = False
    try:
        archive, archive_generated = _archive(work_dir, options)
        # What an earlier run left in this work dir: its state databases and
        # hard links would change what this run measures.
        written += [work_dir / name for name in ("receivers", "runs", "baseline", "scale", "profile")]
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        receivers = [RECEIVERS[name](work_dir / "receivers" / name) for name in options.receivers]
        results.versions = _versions(options, receivers)
        results.data = _data(archive, options, "storescp " + " ".join(StoreSCPReceiver.OPTIONS))
        try:
            for index, receiver in enumerate(receivers):
                bench = Bench(archive, receiver, work_dir / "runs", options.processes, options.timeout,
                              options.postgres_url, options.redis_url, options.embedded_state,
                              options.celery_workers)
                names = CONTENDERS if index == 0 else LATER_RECEIVER_CONTENDERS
                for name in names:
                    if name in options.only:
                        LOGGER.info("running %s to %s", name, receiver.name)
                        result = _run_contender(name, bench)
                        results.runs.append(result)
                        if on_result is not None:
                            on_result(result)
                if index == 0 and "profile" in options.only:
                    LOGGER.info("profiling migrator start to %s", receiver.name)
                    results.profile = measure_profile(bench, work_dir / "profile")
                receiver.stop()
        finally:
            for receiver in receivers:
                receiver.stop()
        if "indexing" in options.only:
            LOGGER.info("reading every header with pydicom in one process")
            results.baseline = measure_baseline(archive, work_dir / "baseline", options.timeout)
        if "planner-scale" in options.only:
            results.scale = measure_scale(options.scale_rows, archive, work_dir / "scale", options.postgres_url,
                                          options.processes, options.timeout)
        results.finished = datetime.now(UTC).isoformat(timespec="seconds")
        results.load_average_end = os.getloadavg()
        (work_dir / RESULTS_NAME).write_text(json.dumps(results.to_json(), indent=2), encoding="utf-8")
    finally:
        if not options.keep:
            _remove(work_dir, created, written + ([work_dir / "archive"] if archive_generated else []))
    return results


def _remove(work_dir: Path, created: bool, written: list[Path]) -> None:
    """Remove what this run wrote: the whole work dir if it created it, else the folders it wrote.

    A work dir given by the caller keeps bench-results.json.
    """
    if created:
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    for path in written:
        shutil.rmtree(path, ignore_errors=True)
