"""``migrator start --dry-run`` prepares every instance, sends none, and leaves the plan as it was."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from migrator.state.models import AuditEntry, Batch, BatchStatus, Instance, Outcome
from scheduler.plan.run import plan
from tests.support import Migration, prepare_migration, running_scps


def _start(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", "start", "--config", str(config), *options],
                          capture_output=True, text=True, timeout=180)


def _dry_run_rows(migration: Migration) -> list[AuditEntry]:
    with migration.sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.outcome == Outcome.DRY_RUN.value)))


def test_dry_run_then_start(tmp_path: Path, sqlite_url: str) -> None:
    with running_scps(tmp_path) as scps:
        migration = prepare_migration(tmp_path, sqlite_url, {n: (s.ae_title, s.port) for n, s in scps.items()})
        plan(migration.settings, migration.sessions)
        config = tmp_path / "migrator.toml"

        dry = _start(config, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert all(not scp.arrivals for scp in scps.values()), "a dry run contacted a destination"
        with migration.sessions() as session:
            assert session.scalar(select(func.count(Instance.id)).where(
                Instance.outcome.is_(None), Instance.parse_error.is_(None))) == sum(
                1 for e in migration.archive.expected if e.destination != "unreadable")
            statuses = set(session.scalars(select(Batch.status)))
        assert statuses == {BatchStatus.PLANNED.value}

        # One dry-run row per instance, naming the destination the real run then uses.
        rows = _dry_run_rows(migration)
        by_destination = Counter(row.destination for row in rows)
        expected = Counter(e.destination for e in migration.archive.expected if e.destination != "unreadable")
        assert by_destination == expected
        assert "nothing sent" in dry.stdout
        assert "main" in dry.stdout

        # A second dry run rehearses the same batches again.
        assert _start(config, "--dry-run").returncode == 0
        assert len(_dry_run_rows(migration)) == 2 * len(rows)

        real = _start(config)
        assert real.returncode == 0, real.stderr
    for expected_outcome in migration.archive.expected:
        if expected_outcome.destination == "unreadable":
            continue
        entries = migration.audit_of(expected_outcome)
        assert [e.outcome for e in entries[:2]] == [Outcome.DRY_RUN.value] * 2
        assert entries[-1].destination == expected_outcome.destination
        assert entries[-1].outcome != Outcome.DRY_RUN.value
    assert migration.repeats(scps) == {}
    assert migration.outcome_counts()[None] == 0


def test_dry_run_missing_file(tmp_path: Path, sqlite_url: str) -> None:
    """A file gone since the plan is named, the exit code is 1, and the instance stays pending."""
    migration = prepare_migration(tmp_path, sqlite_url, {n: ("NONE", 9) for n in ("main", "nonpixel", "sinbin")})
    plan(migration.settings, migration.sessions)
    gone = next(e for e in migration.archive.expected if e.destination == "main")
    path = migration.settings.resolve(migration.settings.root(gone.root).path) / gone.rel_path
    path.unlink()

    dry = _start(tmp_path / "migrator.toml", "--dry-run")
    assert dry.returncode == 1
    assert "would fail 1" in dry.stdout
    entries = migration.audit_of(gone)
    assert [e.outcome for e in entries] == [Outcome.DRY_RUN.value]
    assert entries[0].reason is not None and entries[0].reason.startswith("would fail: ")
    assert str(path) in entries[0].reason
    assert "storage root is mounted" in entries[0].reason
    assert migration.outcomes()[(gone.root, gone.rel_path)] is None


def test_dry_run_rejects_retry_failed(tmp_path: Path, sqlite_url: str) -> None:
    """Resetting failed outcomes would change the record, so a dry run refuses --retry-failed."""
    migration = prepare_migration(tmp_path, sqlite_url, {n: ("NONE", 9) for n in ("main", "nonpixel", "sinbin")})
    plan(migration.settings, migration.sessions)
    result = _start(tmp_path / "migrator.toml", "--dry-run", "--retry-failed")
    assert result.returncode == 1
    assert "--dry-run cannot be combined with --retry-failed" in result.stderr
    assert _dry_run_rows(migration) == []
