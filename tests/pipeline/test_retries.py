"""Automatic retries of transient failures with exponential backoff, embedded mode."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from migrator.demo.archive import ExpectedOutcome
from migrator.demo.scp import StorageSCP
from migrator.requeue import requeue_failed
from migrator.state.models import AuditEntry, Batch, Instance, StorageRoot
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import CALLING_AE, Migration, prepare_migration

OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def side_scps(tmp_path: Path) -> Iterator[dict[str, StorageSCP]]:
    """The non-pixel and sin bin SCPs; each test brings its own main SCP."""
    scps = {"nonpixel": StorageSCP("NONPIXEL", tmp_path / "np", [CALLING_AE]).start(),
            "sinbin": StorageSCP("SINBIN", tmp_path / "sb", [CALLING_AE]).start()}
    yield scps
    for scp in scps.values():
        scp.stop()


def _migration(tmp_path: Path, sqlite_url: str, main: tuple[str, int],
               side_scps: dict[str, StorageSCP], max_retries: int) -> Migration:
    endpoints = {"main": main, **{n: (s.ae_title, s.port) for n, s in side_scps.items()}}
    migration = prepare_migration(tmp_path, sqlite_url, endpoints, max_retries=max_retries,
                                  backoff_seconds=1)
    plan(migration.settings, migration.sessions)
    return migration


def _batch_of(migration: Migration, expected: ExpectedOutcome) -> Batch:
    with migration.sessions() as session:
        batch = session.scalar(
            select(Batch).join(Instance, Instance.batch_id == Batch.id)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)
            .where(StorageRoot.name == expected.root, Instance.rel_path == expected.rel_path))
        assert batch is not None
        return batch


def _gaps(entries: list[AuditEntry]) -> list[float]:
    """Seconds between the end of each attempt and the start of the next."""
    return [(later.started_at - earlier.finished_at).total_seconds()
            for earlier, later in zip(entries, entries[1:], strict=False)]


def _first_time_fails(uids: set[str]) -> Callable[[str], int]:
    seen: Counter[str] = Counter()

    def status_for(uid: str) -> int:
        seen[uid] += 1
        return OUT_OF_RESOURCES if uid in uids and seen[uid] == 1 else 0x0000
    return status_for


def test_out_of_resources_retried_then_sent(tmp_path: Path, sqlite_url: str,
                                            side_scps: dict[str, StorageSCP]) -> None:
    chosen_uids: set[str] = set()
    with StorageSCP("MAIN", tmp_path / "main", [CALLING_AE],
                    status_for=_first_time_fails(chosen_uids)) as main:
        migration = _migration(tmp_path, sqlite_url, (main.ae_title, main.port), side_scps, 3)
        images = migration.expected("main")
        chosen = images[:3]
        chosen_uids.update(e.sop_instance_uid for e in chosen)
        run_embedded(migration.settings, migration.sessions)

        outcomes = migration.outcomes()
        assert {outcomes[(e.root, e.rel_path)] for e in images} == {"sent"}
        for expected in chosen:
            entries = migration.audit_of(expected)
            assert [e.outcome for e in entries] == ["failed", "sent"]
            assert entries[0].transient is True
            assert entries[0].dimse_status == OUT_OF_RESOURCES
            assert _gaps(entries)[0] >= 1.0, "the retry came before the backoff of 1 s"
            batch = _batch_of(migration, expected)
            assert batch.status == "done"
            assert batch.retries == 1
        arrivals = Counter(main.arrivals)
        assert {uid: n for uid, n in arrivals.items() if n > 1} == {uid: 2 for uid in chosen_uids}


def test_retries_exhausted_mark_batch_failed(tmp_path: Path, sqlite_url: str,
                                             side_scps: dict[str, StorageSCP]) -> None:
    failing: set[str] = set()
    main = StorageSCP("MAIN", tmp_path / "main", [CALLING_AE],
                      status_for=lambda uid: OUT_OF_RESOURCES if uid in failing else 0x0000).start()
    try:
        migration = _migration(tmp_path, sqlite_url, (main.ae_title, main.port), side_scps, 2)
        images = migration.expected("main")
        victim = images[0]
        failing.add(victim.sop_instance_uid)
        run_embedded(migration.settings, migration.sessions)

        entries = migration.audit_of(victim)
        assert [e.outcome for e in entries] == ["failed", "failed", "failed"]
        assert all(e.transient for e in entries)
        gaps = _gaps(entries)
        assert gaps[0] >= 1.0
        assert gaps[1] >= 2.0, "the second backoff did not double"
        batch = _batch_of(migration, victim)
        assert batch.status == "failed"
        assert batch.retries == 2
        assert batch.failure_reason is not None
        assert "0xA700" in batch.failure_reason
        assert "2 automatic retries" in batch.failure_reason
        others = [e for e in images if e is not victim]
        assert {migration.outcomes()[(e.root, e.rel_path)] for e in others} == {"sent"}
        assert Counter(main.arrivals)[victim.sop_instance_uid] == 3
        assert max(Counter(uid for uid in main.arrivals if uid != victim.sop_instance_uid).values()) == 1

        with migration.sessions() as session:
            assert requeue_failed(session) == (1, 1)
        batch = _batch_of(migration, victim)
        assert (batch.status, batch.retries, batch.failure_reason) == ("planned", 0, None)
        failing.clear()
        run_embedded(migration.settings, migration.sessions)
        assert migration.outcomes()[(victim.root, victim.rel_path)] == "sent"
        assert _batch_of(migration, victim).status == "done"
    finally:
        main.stop()


def test_permanent_failure_not_retried(tmp_path: Path, sqlite_url: str,
                                       side_scps: dict[str, StorageSCP]) -> None:
    rejected: set[str] = set()
    with StorageSCP("MAIN", tmp_path / "main", [CALLING_AE],
                    status_for=lambda uid: DOES_NOT_MATCH_SOP_CLASS if uid in rejected else 0) as main:
        migration = _migration(tmp_path, sqlite_url, (main.ae_title, main.port), side_scps, 3)
        victim = migration.expected("main")[0]
        rejected.add(victim.sop_instance_uid)
        run_embedded(migration.settings, migration.sessions)

        entries = migration.audit_of(victim)
        assert [e.outcome for e in entries] == ["failed"]
        assert entries[0].transient is False
        batch = _batch_of(migration, victim)
        assert (batch.status, batch.retries) == ("done", 0)


def test_destination_down_then_up(tmp_path: Path, sqlite_url: str,
                                  side_scps: dict[str, StorageSCP]) -> None:
    """Nothing listens on the main port at first; the retries reach it once it starts."""
    port = _free_port()
    main = StorageSCP("MAIN", tmp_path / "main", [CALLING_AE], port=port)
    migration = _migration(tmp_path, sqlite_url, ("MAIN", port), side_scps, 5)
    stop = threading.Event()

    def start_after_first_failure() -> None:
        # The SCP starts once an attempt has failed, however long the pool took to start.
        while not stop.wait(0.2):
            with migration.sessions() as session:
                if session.scalar(select(AuditEntry.id).where(AuditEntry.destination == "main",
                                                              AuditEntry.outcome == "failed")):
                    main.start()
                    return

    starter = threading.Thread(target=start_after_first_failure)
    starter.start()
    try:
        run_embedded(migration.settings, migration.sessions)

        images = migration.expected("main")
        outcomes = migration.outcomes()
        assert {outcomes[(e.root, e.rel_path)] for e in images} == {"sent"}
        failures = [entry for e in images for entry in migration.audit_of(e) if entry.outcome == "failed"]
        assert failures, "no attempt reached the main port before its SCP started"
        assert all(entry.transient for entry in failures)
        # An attempt that failed as the SCP came up finds the port open when the cause is
        # probed, and is reported as an aborted request instead.
        assert any("refused the connection" in (entry.reason or "") for entry in failures), \
            [entry.reason for entry in failures]
        assert sorted(main.arrivals) == sorted(e.sop_instance_uid for e in images)
    finally:
        stop.set()
        starter.join()
        main.stop()
