"""The contenders: storescu (the anchor) and the migrator in each of its modes.

Every contender sends the same generated archive to the same receiver,
which is restarted with an empty output before the contender's measured
phase. A migrator run plans on a new state database, then runs
``migrator start``, which is the measured phase. Its outcomes are checked
against the generator's manifest and the receiver's stored instances.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import typer.main
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from loadtest.archive.manifest import Manifest, ManifestFile
from loadtest.bench.config import Broker, RunConfig, write_run_config
from loadtest.bench.databases import (
    postgres_database,
    remove_redis_keys,
    table_sizes,
    vacuum_full,
)
from loadtest.bench.measure import run_measured
from loadtest.bench.receivers import HOST, Receiver, peer_environment
from loadtest.bench.results import PlanMeasure, RunResult, Spread
from loadtest.bench.workers import running_workers
from loadtest.verify import RecordedFile, compare, outcome_counts, recorded_files
from migrator.config import DestinationConfig
from migrator.report import arrival_spread
from migrator.state.db import open_state
from migrator.state.models import DELIVERED, AuditEntry, Outcome

#: The destinations whose arrival spread is reported: the new PACS, not the sin bin.
SPREAD_DESTINATIONS = ("main", "nonpixel")
#: Differences from the manifest quoted in a row's problems; the rest are counted.
QUOTED_DIFFERENCES = 3

StateKind = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Archive:
    """The generated archive that every contender sends."""

    folder: Path
    roots: dict[str, Path]
    legacy_url: str
    manifest: Manifest

    @property
    def files(self) -> list[ManifestFile]:
        return self.manifest.files

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.manifest.files)


@dataclass(frozen=True)
class Bench:
    """The archive, the receiver and the settings that every contender of one receiver shares."""

    archive: Archive
    receiver: Receiver
    runs_folder: Path
    processes: int
    #: Seconds after which a child process is killed and its row marked invalid.
    timeout: float
    postgres_url: str
    redis_url: str
    embedded_state: StateKind
    #: ``migrator worker`` processes of the Celery contender, each with one pool process.
    celery_workers: int = 2


def dcmsend_engine_available() -> bool:
    """Tell whether this migrator's destinations take ``engine = "dcmsend"``."""
    field = DestinationConfig.model_fields.get("engine")
    return field is not None and "dcmsend" in get_args(field.annotation)


def dry_run_available() -> bool:
    """Tell whether this migrator's ``migrator start`` has a ``--dry-run`` option."""
    from migrator.cli import load_commands

    command = typer.main.get_command(load_commands())
    # Typer's group is not a click.Group when Typer brings its own copy of click.
    commands = getattr(command, "commands", {})
    if "start" not in commands:
        return False
    return any("--dry-run" in parameter.opts for parameter in commands["start"].params)


def run_storescu(bench: Bench) -> RunResult:
    """Send every file of the archive with one storescu process, as the files are (the anchor)."""
    receiver = bench.receiver
    result = RunResult("storescu", "storescu (anchor)", receiver.name,
                       instances=len(bench.archive.files), bytes=bench.archive.bytes)
    receiver.restart()
    receiver_cpu = receiver.cpu_seconds()
    result.load_average = os.getloadavg()[0]
    command = ["storescu", "-xv", "+sd", "+r", "--aetitle", "STORESCU", "--call", receiver.ae_title,
               HOST, str(receiver.port), str(bench.archive.folder / "roots")]
    finished = run_measured(command, bench.runs_folder / f"{receiver.name}-storescu" / "storescu.log",
                            bench.timeout, env=peer_environment())
    result.receiver_cpu_seconds = receiver.cpu_seconds() - receiver_cpu
    result.seconds = finished.usage.seconds
    result.cpu_seconds = finished.usage.cpu_seconds
    if (failure := finished.failure()) is not None:
        result.problems.append(failure)
    _check_received(result, receiver, bench.archive.files, corrected=False)
    return result


def _check_received(result: RunResult, receiver: Receiver, sent: list[ManifestFile], corrected: bool) -> None:
    expected = receiver.expected(sent, corrected)
    received = receiver.received()
    if received != expected:
        result.problems.append(f"{receiver.name} stored {received} instance(s), expected {expected}")


@contextmanager
def _state_database(bench: Bench, kind: StateKind, folder: Path, purpose: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database(bench.postgres_url, purpose) as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'state.sqlite3'}"


def run_migrator(bench: Bench, contender: str, label: str, *,
                 engine: Literal["pynetdicom", "dcmsend"] | None = None,
                 mode: Literal["stripe", "folder"] = "stripe", dry_run: bool = False,
                 celery: bool = False) -> RunResult:
    """Plan the archive on a new state database, then measure ``migrator start``.

    With ``celery`` the state is on PostgreSQL and ``bench.celery_workers``
    ``migrator worker`` processes run the batches from Redis queues of a
    new prefix. Otherwise the batches run on the embedded process pool of
    ``run.processes`` processes.
    """
    receiver = bench.receiver
    kind: StateKind = "postgresql" if celery else bench.embedded_state
    folder = bench.runs_folder / f"{receiver.name}-{contender}"
    result = RunResult(contender, label, receiver.name, state=kind)
    with ExitStack() as stack:
        state_url = stack.enter_context(_state_database(bench, kind, folder, contender))
        broker = None
        if celery:
            broker = Broker(bench.redis_url, f"bench-{uuid.uuid4().hex[:10]}")
            stack.callback(remove_redis_keys, broker.url, broker.queue_prefix)
        config = write_run_config(folder, bench.archive.roots, bench.archive.legacy_url,
                                  RunConfig(state_url, receiver.port, receiver.ae_title, bench.processes,
                                            engine, broker))
        migrator = [sys.executable, "-m", "migrator"]
        plan = run_measured([*migrator, "plan", "--config", str(config), "--mode", mode],
                            folder / "plan.log", bench.timeout, env=peer_environment())
        if (failure := plan.failure()) is not None:
            result.problems.append(failure)
            return result
        index_seconds, index_cpu_seconds = _index_phase(folder / "plan.log")
        result.plan = PlanMeasure(f"{receiver.name}-{contender}", kind, bench.processes,
                                  len(bench.archive.files), plan.usage.seconds, plan.usage.cpu_seconds,
                                  plan.usage.max_rss_kib, index_seconds, index_cpu_seconds)

        receiver.restart()
        workers = (stack.enter_context(running_workers(config, list(bench.archive.roots),
                                                       bench.celery_workers, folder))
                   if celery else None)
        worker_cpu = workers.cpu_seconds() if workers is not None else 0.0
        receiver_cpu = receiver.cpu_seconds()
        result.load_average = os.getloadavg()[0]
        start = run_measured([*migrator, "start", "--config", str(config),
                              *(["--dry-run"] if dry_run else [])],
                             folder / "start.log", bench.timeout, env=peer_environment())
        result.receiver_cpu_seconds = receiver.cpu_seconds() - receiver_cpu
        result.seconds = start.usage.seconds
        result.cpu_seconds = start.usage.cpu_seconds
        if workers is not None:
            result.cpu_seconds += workers.cpu_seconds() - worker_cpu
        if (failure := start.failure()) is not None:
            result.problems.append(failure)

        sessions = open_state(state_url)
        state_engine: Engine = sessions.kw["bind"]
        try:
            _check_outcomes(result, sessions, bench, dry_run)
            result.spread = _spread(sessions)
            if kind == "postgresql":
                result.state_sizes = table_sizes(state_engine)
                vacuum_full(state_engine)
                result.state_sizes_vacuumed = table_sizes(state_engine)
        finally:
            state_engine.dispose()
    return result


def _check_outcomes(result: RunResult, sessions: sessionmaker[Session], bench: Bench,
                    dry_run: bool) -> None:
    """Compare the recorded outcomes with the manifest, and the receiver's count with the deliveries."""
    manifest = bench.archive.manifest
    recorded = recorded_files(sessions)
    delivered_outcomes = {outcome.value for outcome in DELIVERED}
    delivered = [entry for entry in manifest.files
                 if (found := recorded.get((entry.root, entry.path))) is not None
                 and found.outcome in delivered_outcomes]
    result.failed_attempts = _failed_attempts(sessions)
    if dry_run:
        # A dry run sends nothing: each file must still be pending, its last
        # audit row naming the destination and corrections of the manifest.
        result.instances = len(manifest.files)
        result.bytes = bench.archive.bytes
        differences = _dry_run_differences(manifest.files, recorded)
        if differences:
            quoted = "; ".join(differences[:QUOTED_DIFFERENCES])
            result.problems.append(f"{len(differences)} file(s) differ from the manifest: {quoted}")
        _check_received(result, bench.receiver, [], corrected=True)
        return
    result.instances = len(delivered)
    result.bytes = sum(entry.size for entry in delivered)
    differences = compare(manifest, recorded)
    if differences:
        quoted = "; ".join(differences[:QUOTED_DIFFERENCES])
        result.problems.append(f"{len(differences)} file(s) differ from the manifest: {quoted}")
    counts = dict(outcome_counts(recorded))
    expected = manifest.summary["expected"]["outcome"]
    if counts != expected:
        result.problems.append(f"outcome counts {counts}, expected {expected}")
    _check_received(result, bench.receiver, delivered, corrected=True)


def _dry_run_differences(files: list[ManifestFile], recorded: dict[tuple[str, str], RecordedFile]) -> list[str]:
    differences = []
    for entry in files:
        found = recorded.get((entry.root, entry.path))
        where = f"{entry.root}/{entry.path}"
        if found is None or found.outcome is not None:
            differences.append(f"{where}: outcome {found and found.outcome}, expected none after a dry run")
        elif found.destination != entry.destination:
            differences.append(f"{where}: would go to {found.destination}, expected {entry.destination}")
        elif entry.outcome == "sent" and found.corrections != entry.corrections:
            differences.append(f"{where}: would change {found.corrections}, expected {entry.corrections}")
    return differences


def _failed_attempts(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Count the audit rows with outcome failed, per reason, of every attempt of the run."""
    with sessions() as session:
        rows = session.execute(select(AuditEntry.reason, func.count(AuditEntry.id))
                               .where(AuditEntry.outcome == Outcome.FAILED.value)
                               .group_by(AuditEntry.reason).order_by(func.count(AuditEntry.id).desc()))
        return {reason or "no reason recorded": count for reason, count in rows}


def _spread(sessions: sessionmaker[Session]) -> Spread:
    with sessions() as session:
        spread = arrival_spread(session, destinations=SPREAD_DESTINATIONS, top=1)
    return Spread(spread.studies, spread.median, spread.percentiles.get(95), spread.max_seconds)


#: The line in which ``migrator plan`` reports its indexing phase.
_INDEX_LINE = re.compile(r"indexing: [\d,]+ file\(s\) listed, [\d,]+ parsed in ([\d.]+) s, "
                         r"([\d.]+) CPU-seconds")


def _index_phase(log: Path) -> tuple[float | None, float | None]:
    """Return the indexing phase's seconds and CPU seconds from a plan's output, if it printed them."""
    found = _INDEX_LINE.search(log.read_text(encoding="utf-8", errors="replace"))
    return (float(found[1]), float(found[2])) if found else (None, None)
