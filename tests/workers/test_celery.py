"""The distributed mode with real Celery worker processes on Redis and PostgreSQL state."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.models import AuditEntry, Batch, Instance, StorageRoot
from scheduler.dispatch.distributed import celery_sender, run_distributed
from scheduler.plan.run import plan
from tests.support import CALLING_AE, Migration, prepare_migration
from tests.workers.celery_support import REDIS_URL, child_pids, start_worker


def _distributed(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP],
                 main_associations: int | None = None, max_retries: int = 0) -> Migration:
    """Prepare the demo archive with a [broker] section whose queues only this test uses."""
    migration = prepare_migration(tmp_path, state_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()},
                                  max_retries=max_retries)
    config = tmp_path / "migrator.toml"
    text = config.read_text().replace("max_instances = 20", "max_instances = 5")
    if main_associations:
        text = text.replace("[destinations.main]\n",
                            f"[destinations.main]\nmax_associations = {main_associations}\n")
    config.write_text(text
                      + f'\n[broker]\nurl = "{REDIS_URL}"\nqueue_prefix = "test-{uuid.uuid4().hex[:10]}"\n'
                      "max_in_flight_per_root = 2\n")
    migration.settings = load_settings(config)
    plan(migration.settings, migration.sessions)
    return migration


def _outcomes_by_root(migration: Migration) -> dict[str, Counter[str | None]]:
    with migration.sessions() as session:
        rows = session.execute(select(StorageRoot.name, Instance.outcome)
                               .join(StorageRoot, StorageRoot.id == Instance.root_id))
        result: dict[str, Counter[str | None]] = {}
        for root, outcome in rows:
            result.setdefault(root, Counter())[outcome] += 1
        return result


def test_queues_per_root_are_honoured(worker_processes, scps, tmp_path: Path, postgres_url: str) -> None:
    """A worker serves only its roots' queues; a second worker finishes the third root."""
    migration = _distributed(tmp_path, postgres_url, scps)
    config = tmp_path / "migrator.toml"
    start_worker(config, "root1,root2", worker_processes, tmp_path / "worker-a.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run_distributed(migration.settings, migration.sessions, timeout=2, poll_seconds=0.5)
        by_root = _outcomes_by_root(migration)
        if None not in by_root["root1"] and None not in by_root["root2"]:
            break
    by_root = _outcomes_by_root(migration)
    assert None not in by_root["root1"], (tmp_path / "worker-a.log").read_text()[-3000:]
    assert None not in by_root["root2"]
    readable_root3 = sum(n for outcome, n in by_root["root3"].items() if outcome != "unreadable")
    assert by_root["root3"][None] == readable_root3

    start_worker(config, "root3", worker_processes, tmp_path / "worker-b.log")
    pending = run_distributed(migration.settings, migration.sessions, timeout=120, poll_seconds=0.5)
    assert pending == 0, (tmp_path / "worker-b.log").read_text()[-3000:]
    assert None not in migration.outcome_counts()
    assert migration.repeats(scps) == {}


def test_second_delivery_does_nothing(worker_processes, scps, tmp_path: Path, postgres_url: str) -> None:
    """The same batch message delivered twice migrates the batch once."""
    migration = _distributed(tmp_path, postgres_url, scps)
    start_worker(tmp_path / "migrator.toml", "root1,root2,root3", worker_processes, tmp_path / "worker.log")
    with migration.sessions() as session:
        batch_id, root = session.execute(select(Batch.id, StorageRoot.name)
                                         .join(StorageRoot, StorageRoot.id == Batch.root_id)
                                         .order_by(Batch.id).limit(1)).one()
    assert migration.settings.broker is not None
    send = celery_sender(migration.settings)
    queue = migration.settings.broker.queue(root)
    send(batch_id, queue)
    send(batch_id, queue)
    pending = run_distributed(migration.settings, migration.sessions, timeout=120, poll_seconds=0.5)
    assert pending == 0, (tmp_path / "worker.log").read_text()[-3000:]
    with migration.sessions() as session:
        audit_rows = Counter(session.scalars(
            select(AuditEntry.instance_id).join(Instance, Instance.id == AuditEntry.instance_id)
            .where(Instance.batch_id == batch_id)))
    assert audit_rows
    assert set(audit_rows.values()) == {1}
    assert migration.repeats(scps) == {}


def test_killed_worker_batch_is_finished(worker_processes, tmp_path: Path, postgres_url: str) -> None:
    """SIGKILL of the process running a batch: the batch is redelivered and finished.

    At most the one instance in flight at the kill reaches the destination twice.
    """
    slow = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE], delay=0.2).start()
            for name in ("main", "nonpixel", "sinbin")}
    try:
        migration = _distributed(tmp_path, postgres_url, slow)
        worker = start_worker(tmp_path / "migrator.toml", "root1,root2,root3", worker_processes,
                               tmp_path / "worker.log")
        killed = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            run_distributed(migration.settings, migration.sessions, timeout=0.5, poll_seconds=0.25)
            with migration.sessions() as session:
                running = session.scalar(select(Batch.lease_owner).where(Batch.status == "running"))
                sent = session.scalar(select(AuditEntry.id).limit(1).offset(2))
            children = child_pids(worker.pid)
            if running and sent and children:
                owner_pid = int(running.rpartition(":")[2])
                if owner_pid in children:
                    os.kill(owner_pid, signal.SIGKILL)
                    killed = True
        assert killed, (tmp_path / "worker.log").read_text()[-3000:]
        pending = run_distributed(migration.settings, migration.sessions, timeout=180, poll_seconds=0.5)
        assert pending == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        for scp in slow.values():
            scp.stop()
    assert None not in migration.outcome_counts()
    assert len(migration.repeats(slow)) <= 1
    with migration.sessions() as session:
        attempts = session.scalars(select(Batch.attempts).where(Batch.attempts > 1)).all()
    assert attempts, "no batch was claimed a second time; the kill hit no running batch"


def test_association_limit_holds_across_processes(worker_processes, tmp_path: Path, postgres_url: str) -> None:
    """With max_associations = 1, worker processes never open two associations to main at once."""
    slow = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE], delay=0.1).start()
            for name in ("main", "nonpixel", "sinbin")}
    try:
        migration = _distributed(tmp_path, postgres_url, slow, main_associations=1)
        start_worker(tmp_path / "migrator.toml", "root1,root2", worker_processes, tmp_path / "worker-a.log",
                      concurrency=2)
        start_worker(tmp_path / "migrator.toml", "root1,root2,root3", worker_processes, tmp_path / "worker-b.log",
                      concurrency=2)
        pending = run_distributed(migration.settings, migration.sessions, timeout=240, poll_seconds=0.5)
        assert pending == 0, (tmp_path / "worker-a.log").read_text()[-3000:]
    finally:
        for scp in slow.values():
            scp.stop()
    assert slow["main"].max_connections == 1
    assert None not in migration.outcome_counts()
    assert migration.outcome_counts()["failed"] == 0


def test_transient_failure_retried_by_workers(worker_processes, tmp_path: Path, postgres_url: str) -> None:
    """0xA700 on a first attempt: the dispatcher queues the batch again after the backoff."""
    chosen: set[str] = set()
    seen: Counter[str] = Counter()

    def status_for(uid: str) -> int:
        seen[uid] += 1
        return 0xA700 if uid in chosen and seen[uid] == 1 else 0x0000

    scps = {"main": StorageSCP("MAIN", tmp_path / "main", [CALLING_AE], status_for=status_for).start(),
            **{name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE]).start()
               for name in ("nonpixel", "sinbin")}}
    try:
        migration = _distributed(tmp_path, postgres_url, scps, max_retries=3)
        victims = migration.expected("main")[:3]
        chosen.update(e.sop_instance_uid for e in victims)
        start_worker(tmp_path / "migrator.toml", "root1,root2,root3", worker_processes, tmp_path / "worker.log")
        pending = run_distributed(migration.settings, migration.sessions, timeout=120, poll_seconds=0.5)
        assert pending == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        for scp in scps.values():
            scp.stop()
    for victim in victims:
        entries = migration.audit_of(victim)
        assert [e.outcome for e in entries] == ["failed", "sent"]
        assert entries[0].transient is True
        assert (entries[1].started_at - entries[0].finished_at).total_seconds() >= 1.0
    with migration.sessions() as session:
        retried = session.scalars(select(Batch.retries).where(Batch.retries > 0)).all()
        statuses = set(session.scalars(select(Batch.status)))
    assert retried, "no batch was retried"
    assert statuses == {"done"}
    assert migration.repeats(scps) == {uid: 2 for uid in chosen}
