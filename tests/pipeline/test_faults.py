"""Runs that overlap, lose their parent, or meet a silent destination or a wrong database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.errors import LegacyDatabaseError
from migrator.state.models import AuditEntry
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import CALLING_AE, Migration, prepare_migration, running_scps

JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
PLAIN_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}



def _start(config: Path, started: list[subprocess.Popen[Any]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "migrator", "start", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    started.append(process)
    return process


def _planned(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP]) -> Migration:
    """Prepare the demo archive aimed at ``scps`` and plan it."""
    migration = prepare_migration(tmp_path, state_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
    plan(migration.settings, migration.sessions)
    return migration


def _wait_for_audit_rows(migration: Migration, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with migration.sessions() as session:
        while time.monotonic() < deadline:
            done = session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.batch_id.is_not(None)))
            session.rollback()
            if done and done >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"fewer than {count} audit rows after {timeout} s")


def test_overlapping_starts_send_nothing_twice(started: list[subprocess.Popen[Any]], tmp_path: Path,
                                               postgres_url: str) -> None:
    """Two start commands at once share the batches through leases."""
    with running_scps(tmp_path, delay=0.05) as scps:
        migration = _planned(tmp_path, postgres_url, scps)
        first = _start(tmp_path / "migrator.toml", started)
        _wait_for_audit_rows(migration, 3)
        second = _start(tmp_path / "migrator.toml", started)
        # The run that ends first may exit 1, because the other still has leased
        # batches whose instances are pending then.
        assert first.wait(timeout=300) in (0, 1)
        assert second.wait(timeout=300) in (0, 1)
    assert None not in migration.outcome_counts()
    assert migration.repeats(scps) == {}
    with migration.sessions() as session:
        assert session.scalar(select(func.count(AuditEntry.id))) == len(migration.archive.expected)


def test_pool_dies_with_killed_start(started: list[subprocess.Popen[Any]], tmp_path: Path,
                                     sqlite_url: str) -> None:
    """SIGKILL to the start process alone stops its pool; the next start finishes the run."""
    with running_scps(tmp_path, delay=0.15) as scps:
        migration = _planned(tmp_path, sqlite_url, scps)
        first = _start(tmp_path / "migrator.toml", started)
        _wait_for_audit_rows(migration, 6)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(1)
        arrivals_after_kill = sum(len(scp.arrivals) for scp in scps.values())
        time.sleep(1)
        assert sum(len(scp.arrivals) for scp in scps.values()) == arrivals_after_kill
        second = _start(tmp_path / "migrator.toml", started)
        assert second.wait(timeout=300) == 0
    assert None not in migration.outcome_counts()
    assert len(migration.repeats(scps)) <= migration.settings.run.processes


def test_silent_destination_fails_fast(tmp_path: Path, sqlite_url: str) -> None:
    """A destination that never responds fails the rest of the batch after three timeouts."""
    with StorageSCP("MAIN", tmp_path / "silent", [CALLING_AE], delay=30) as silent, \
            running_scps(tmp_path) as scps:
        endpoints = {n: (s.ae_title, s.port) for n, s in scps.items()}
        endpoints["main"] = (silent.ae_title, silent.port)
        migration = prepare_migration(tmp_path, sqlite_url, endpoints)
        text = (tmp_path / "migrator.toml").read_text()
        text = text.replace('[destinations.main]\n', '[destinations.main]\ndimse_timeout = 1\n')
        text = text.replace("max_instances = 20", "max_instances = 100")
        (tmp_path / "migrator.toml").write_text(text)
        settings = load_settings(tmp_path / "migrator.toml")
        plan(settings, migration.sessions)
        started = time.monotonic()
        run_embedded(settings, migration.sessions)
        elapsed = time.monotonic() - started
    images = migration.expected("main")
    outcomes = migration.outcomes()
    assert all(outcomes[(e.root, e.rel_path)] == "failed" for e in images)
    reasons = [a.reason or "" for e in images for a in migration.audit_of(e)]
    assert sum("timed out after 1 s" in r for r in reasons) <= 3 * len(migration.settings.roots)
    assert any("sent no response to 3 C-STORE requests" in r for r in reasons)
    assert elapsed < 60


def test_no_legacy_matches_stops_the_run(tmp_path: Path, sqlite_url: str) -> None:
    """A query that finds none of the indexed UIDs stops the run before anything is sent."""
    with running_scps(tmp_path) as scps:
        migration = prepare_migration(tmp_path, sqlite_url,
                                      {n: (s.ae_title, s.port) for n, s in scps.items()})
        query = migration.settings.legacy.query.replace("IN :uids", "IN :uids AND 1 = 0")
        legacy = migration.settings.legacy.model_copy(update={"query": query})
        settings = migration.settings.model_copy(update={"legacy": legacy})
        plan(settings, migration.sessions)
        with pytest.raises(LegacyDatabaseError, match="found none of"):
            run_embedded(settings, migration.sessions)
        assert all(not scp.arrivals for scp in scps.values())
        allowed = settings.model_copy(update={"legacy": legacy.model_copy(update={"allow_no_matches": True})})
        run_embedded(allowed, migration.sessions)
    counts = migration.outcome_counts()
    assert counts["sinbinned"] == len(migration.archive.expected) - len(migration.expected("unreadable"))


def test_missing_exclusion_list_is_a_clear_error(tmp_path: Path, sqlite_url: str) -> None:
    """start names the missing exclusion list and shows no traceback."""
    migration = prepare_migration(tmp_path, sqlite_url, {"main": ("A", 1), "nonpixel": ("B", 2),
                                                         "sinbin": ("C", 3)})
    plan(migration.settings, migration.sessions)
    migration.archive.exclusion_list.unlink()
    result = subprocess.run([sys.executable, "-m", "migrator", "start", "--config", str(tmp_path / "migrator.toml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot read the exclusion list" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_legacy_file_is_not_created(tmp_path: Path, sqlite_url: str) -> None:
    """A legacy SQLite path that does not exist is reported, not created empty."""
    migration = prepare_migration(tmp_path, sqlite_url, {"main": ("A", 1), "nonpixel": ("B", 2),
                                                         "sinbin": ("C", 3)})
    plan(migration.settings, migration.sessions)
    migration.archive.legacy_db.unlink()
    with pytest.raises(LegacyDatabaseError, match="legacy database file not found"):
        run_embedded(migration.settings, migration.sessions)
    assert not migration.archive.legacy_db.exists()


def test_wrong_path_prefix_stops_the_run(tmp_path: Path, sqlite_url: str) -> None:
    """A root whose legacy_path_prefix matches no legacy path stops the run before sending."""
    with running_scps(tmp_path) as scps:
        migration = prepare_migration(tmp_path, sqlite_url,
                                      {n: (s.ae_title, s.port) for n, s in scps.items()})
        text = (tmp_path / "migrator.toml").read_text()
        (tmp_path / "migrator.toml").write_text(text.replace("root1\\\\", "share1\\\\", 1))
        settings = load_settings(tmp_path / "migrator.toml")
        assert settings.roots[0].legacy_path_prefix.endswith("share1\\")
        plan(settings, migration.sessions)
        with pytest.raises(LegacyDatabaseError, match="legacy_path_prefix"):
            run_embedded(settings, migration.sessions)
    assert all(not scp.arrivals for scp in scps.values())


def test_interrupt_claims_no_more_batches(started: list[subprocess.Popen[Any]], tmp_path: Path,
                                          sqlite_url: str) -> None:
    """Ctrl-C stops sending at once; the next start finishes with at most one repeat per process."""
    with running_scps(tmp_path, delay=0.1) as scps:
        migration = prepare_migration(tmp_path, sqlite_url,
                                      {n: (s.ae_title, s.port) for n, s in scps.items()})
        text = (tmp_path / "migrator.toml").read_text()
        (tmp_path / "migrator.toml").write_text(text.replace("max_instances = 20", "max_instances = 4"))
        settings = load_settings(tmp_path / "migrator.toml")
        plan(settings, migration.sessions)
        first = subprocess.Popen([sys.executable, "-m", "migrator", "start", "--config",
                                  str(tmp_path / "migrator.toml")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        started.append(first)
        _wait_for_audit_rows(migration, 5)
        os.killpg(first.pid, signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 130, stderr
        assert "run 'migrator start' again to resume" in stderr
        time.sleep(0.5)
        arrivals_after_interrupt = sum(len(scp.arrivals) for scp in scps.values())
        time.sleep(1.5)
        assert sum(len(scp.arrivals) for scp in scps.values()) == arrivals_after_interrupt
        assert None in migration.outcome_counts(), "the run finished before the interrupt"
        second = _start(tmp_path / "migrator.toml", started)
        assert second.wait(timeout=300) == 0
    assert None not in migration.outcome_counts()
    assert len(migration.repeats(scps)) <= settings.run.processes


def test_rejected_jpeg2000_is_named(tmp_path: Path, sqlite_url: str) -> None:
    """A destination without JPEG 2000 fails those instances with the transfer syntax in the reason."""
    with StorageSCP("PLAIN", tmp_path / "plain", [CALLING_AE],
                    transfer_syntaxes=sorted(PLAIN_SYNTAXES)) as plain, running_scps(tmp_path) as scps:
        endpoints = {n: (s.ae_title, s.port) for n, s in scps.items()}
        endpoints["main"] = (plain.ae_title, plain.port)
        migration = prepare_migration(tmp_path, sqlite_url, endpoints)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
    outcomes = migration.outcomes()
    jpeg2000 = [e for e in migration.expected("main") if e.transfer_syntax in JPEG_2000]
    assert jpeg2000
    for expected in jpeg2000:
        assert outcomes[(expected.root, expected.rel_path)] == "failed"
        assert expected.sop_instance_uid not in plain.received
        reason = migration.audit_of(expected)[-1].reason or ""
        assert expected.transfer_syntax in reason, reason
    uncompressed = [e for e in migration.expected("main") if e.transfer_syntax in PLAIN_SYNTAXES]
    assert uncompressed
    assert all(outcomes[(e.root, e.rel_path)] == "sent" for e in uncompressed)
