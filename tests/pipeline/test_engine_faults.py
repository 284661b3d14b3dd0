"""The dcmsend engine, parallel associations and batched commits in whole runs with faults."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.models import AuditEntry
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import Migration, prepare_migration, running_scps

SECTIONS = ["[destinations.main]\n", "[destinations.nonpixel]\n", "[sinbin]\n"]
REDIS_URL = os.environ.get("MIGRATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
#: Statuses the main SCP returns for chosen images, with the outcome and transient flag expected.
STATUSES = {0xB000: ("sent_with_warning", False), 0xA700: ("failed", True),
            0xA900: ("failed", False), 0xC000: ("failed", False)}



def _configure(config: Path, **fields: object) -> None:
    """Add ``fields`` to every destination and the sin bin of ``config``."""
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in fields.items())
    text = config.read_text()
    for section in SECTIONS:
        text = text.replace(section, section + lines)
    config.write_text(text)


def _planned(tmp_path: Path, sqlite_url: str, scps: dict[str, StorageSCP], **fields: object) -> Migration:
    migration = prepare_migration(tmp_path, sqlite_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
    _configure(tmp_path / "migrator.toml", **fields)
    migration.settings = load_settings(tmp_path / "migrator.toml")
    plan(migration.settings, migration.sessions)
    return migration


def _start(config: Path, started: list[subprocess.Popen[Any]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "migrator", "start", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    started.append(process)
    return process


def _wait_for_audit_rows(migration: Migration, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with migration.sessions() as session:
        while time.monotonic() < deadline:
            done = session.scalar(select(func.count(AuditEntry.id)))
            session.rollback()
            if done and done >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"fewer than {count} audit rows after {timeout} s")


def _dcmsend_running_for(folder: Path) -> list[int]:
    """Return the PIDs of dcmsend processes sending files under ``folder``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if command and command[0].endswith(b"dcmsend") and any(str(folder).encode() in part
                                                                for part in command):
            pids.append(int(entry.name))
    return pids


def test_dcmsend_statuses_become_outcomes(tmp_path: Path, sqlite_url: str) -> None:
    """Each C-STORE status that dcmsend logs ends as the outcome, status and transient flag."""
    status_by_uid: dict[str, int] = {}
    with running_scps(tmp_path) as scps:
        scps["main"].status_for = lambda uid: status_by_uid.get(uid, 0)
        migration = _planned(tmp_path, sqlite_url, scps, engine="dcmsend")
        images = [e for e in migration.expected("main") if e.transfer_syntax and "4.9" in e.transfer_syntax]
        chosen = dict(zip(STATUSES, images, strict=False))
        assert len(chosen) == len(STATUSES)
        for status, expected in chosen.items():
            status_by_uid[expected.sop_instance_uid] = status
        run_embedded(migration.settings, migration.sessions)
    outcomes = migration.outcomes()
    for status, expected in chosen.items():
        outcome, transient = STATUSES[status]
        last = migration.audit_of(expected)[-1]
        assert outcomes[(expected.root, expected.rel_path)] == outcome
        assert last.dimse_status == status
        assert last.transient is transient
        assert f"0x{status:04X}" in (last.reason or "")
    others = [e for e in migration.expected("main") if e not in chosen.values()]
    assert all(outcomes[(e.root, e.rel_path)] == "sent" for e in others)


def test_dcmsend_rejected_association_fails_transient(tmp_path: Path, sqlite_url: str) -> None:
    """A rejected association fails the destination's instances as transient, naming the cause."""
    with running_scps(tmp_path) as scps, \
            StorageSCP("MAIN", tmp_path / "rejecting", ["SOMEONE"]) as rejecting:
        scps["main"] = rejecting
        migration = _planned(tmp_path, sqlite_url, scps, engine="dcmsend")
        run_embedded(migration.settings, migration.sessions)
    outcomes = migration.outcomes()
    for expected in migration.expected("main"):
        assert outcomes[(expected.root, expected.rel_path)] == "failed"
        last = migration.audit_of(expected)[-1]
        assert last.transient
        assert "rejected the association; check that it accepts calling AE title MIGRATOR" in (last.reason or "")
    assert not rejecting.arrivals


def test_killed_start_leaves_no_dcmsend(started: list[subprocess.Popen[Any]], tmp_path: Path,
                                        sqlite_url: str) -> None:
    """SIGKILL to start ends its pool and their dcmsend children; the next start finishes the run."""
    with running_scps(tmp_path, delay=0.15) as scps:
        migration = _planned(tmp_path, sqlite_url, scps, engine="dcmsend")
        first = _start(tmp_path / "migrator.toml", started)
        _wait_for_audit_rows(migration, 6)
        assert _dcmsend_running_for(tmp_path)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(1)
        assert _dcmsend_running_for(tmp_path) == []
        arrivals_after_kill = sum(len(scp.arrivals) for scp in scps.values())
        time.sleep(1)
        assert sum(len(scp.arrivals) for scp in scps.values()) == arrivals_after_kill
        second = _start(tmp_path / "migrator.toml", started)
        assert second.wait(timeout=300) == 0
    assert None not in migration.outcome_counts()
    # Per pool process: the C-STORE in flight, and the one before it if its
    # response was not recorded yet, since dcmsend goes on meanwhile.
    assert len(migration.repeats(scps)) <= 2 * migration.settings.run.processes


def test_commit_window_bounds_repeats(started: list[subprocess.Popen[Any]], tmp_path: Path,
                                      sqlite_url: str) -> None:
    """With audit_commit_seconds, a kill repeats at most that many seconds of outcomes per process."""
    window, delay = 0.5, 0.1
    with running_scps(tmp_path, delay=delay) as scps:
        migration = _planned(tmp_path, sqlite_url, scps, audit_commit_seconds=window)
        first = _start(tmp_path / "migrator.toml", started)
        _wait_for_audit_rows(migration, 10)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = _start(tmp_path / "migrator.toml", started)
        assert second.wait(timeout=300) == 0
    assert None not in migration.outcome_counts()
    # Per process: the responses of one window (each takes at least `delay`), the
    # one that came in just as the window closed, and the C-STORE in flight.
    bound = migration.settings.run.processes * (math.ceil(window / delay) + 2)
    assert len(migration.repeats(scps)) <= bound


@pytest.mark.parametrize("engine", ["pynetdicom", "dcmsend"])
def test_parallel_associations_share_a_batch(tmp_path: Path, sqlite_url: str, engine: str) -> None:
    """parallel_associations = 2 opens two associations to the destination; each instance ends once."""
    with running_scps(tmp_path, delay=0.02) as scps:
        migration = _planned(tmp_path, sqlite_url, scps, engine=engine, parallel_associations=2)
        settings = migration.settings.model_copy(
            update={"run": migration.settings.run.model_copy(update={"processes": 1})})
        run_embedded(settings, migration.sessions)
    assert scps["main"].max_connections == 2
    assert None not in migration.outcome_counts()
    assert migration.repeats(scps) == {}
    with migration.sessions() as session:
        assert session.scalar(select(func.count(AuditEntry.id))) == len(migration.archive.expected)
    sent = migration.expected("main") + migration.expected("nonpixel")
    assert migration.outcome_counts()["sent"] == len(sent)


def test_parallel_associations_respect_max_associations(tmp_path: Path, sqlite_url: str) -> None:
    """With max_associations = 1 in Redis, parallel_associations = 2 still opens one association."""
    with running_scps(tmp_path, delay=0.02) as scps:
        migration = _planned(tmp_path, sqlite_url, scps, parallel_associations=2, max_associations=1)
        with (tmp_path / "migrator.toml").open("a") as config:
            config.write(f'\n[broker]\nurl = "{REDIS_URL}"\nqueue_prefix = "test-{uuid.uuid4().hex}"\n')
        settings = load_settings(tmp_path / "migrator.toml")
        settings = settings.model_copy(update={"run": settings.run.model_copy(update={"processes": 1})})
        run_embedded(settings, migration.sessions)
    assert scps["main"].max_connections == 1
    assert None not in migration.outcome_counts()
    assert migration.repeats(scps) == {}
