"""``plan --distributed``: folders indexed by real Celery workers, compared with a local plan."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import scheduler.plan.distributed as distributed_plan
from migrator.config import Settings, load_settings
from migrator.state.db import open_state
from migrator.state.models import (
    AuditEntry,
    Batch,
    IndexFolder,
    IndexFolderStatus,
    IndexRun,
    Instance,
    StorageRoot,
)
from scheduler.plan.distributed import IndexingTimedOut, index_roots_distributed
from scheduler.plan.run import RootPlanSummary, plan
from tests.conftest import postgres_database
from tests.support import Migration, prepare_migration
from tests.workers.celery_support import add_broker, child_pids, start_worker

#: Nothing is sent in these tests, so no SCP listens on these ports.
ENDPOINTS = {"main": ("MAIN", 11112), "nonpixel": ("NP", 11113), "sinbin": ("SB", 11114)}
MAX_INDEX_TASKS = 3
ACTIVE = [IndexFolderStatus.QUEUED.value, IndexFolderStatus.RUNNING.value]


def _distributed_migration(tmp_path: Path, state_url: str, missing_root: bool = False) -> Migration:
    """Prepare the demo archive with a [broker] section of its own, optionally a root that does not exist."""
    migration = prepare_migration(tmp_path, state_url, ENDPOINTS)
    config = tmp_path / "migrator.toml"
    if missing_root:
        with config.open("a", encoding="utf-8") as file:
            file.write(f'\n[[roots]]\nname = "root4"\npath = "{tmp_path / "not-mounted"}"\n')
    add_broker(config, max_index_tasks_per_root=MAX_INDEX_TASKS)
    migration.settings = load_settings(config)
    return migration


def _add_hard_cases(migration: Migration, tmp_path: Path) -> None:
    """Add a non-UTF-8 file name, a non-UTF-8 folder name and a link out of the root."""
    roots = migration.archive.roots
    sample = migration.expected("main")[0]
    source = roots[sample.root] / sample.rel_path
    shutil.copy(source, roots["root1"] / os.fsdecode(b"bad\xffname.dcm"))
    bad_folder = roots["root2"] / os.fsdecode(b"bad\xfefolder")
    bad_folder.mkdir()
    shutil.copy(source, bad_folder / "inside.dcm")
    outside = tmp_path / "outside.dcm"
    shutil.copy(source, outside)
    (roots["root3"] / "outside-link.dcm").symlink_to(outside)


def _local_twin(tmp_path: Path, migration: Migration, state_url: str) -> tuple[Settings, sessionmaker[Session]]:
    """Return the same configuration on another state database, for a local plan of the same archive."""
    text = (tmp_path / "migrator.toml").read_text(encoding="utf-8")
    local_config = tmp_path / "local.toml"
    local_config.write_text(text.replace(str(migration.settings.state.url), state_url), encoding="utf-8")
    settings = load_settings(local_config)
    return settings, open_state(settings.state.sqlalchemy_url(settings.base_dir))


def _index(sessions: sessionmaker[Session]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(root, relative path) -> every index field, the outcome and the batch's sequence number."""
    with sessions() as session:
        rows = session.execute(
            select(StorageRoot.name, Instance.rel_path, Instance.folder, Instance.size, Instance.mtime_ns,
                   Instance.transfer_syntax, Instance.sop_class_uid, Instance.sop_instance_uid,
                   Instance.study_uid, Instance.series_uid, Instance.modality, Instance.has_pixel_data,
                   Instance.parse_error, Instance.outcome, Batch.seq)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)
            .outerjoin(Batch, Batch.id == Instance.batch_id))
        return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def _batches(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(
            select(StorageRoot.name, Batch.seq, Batch.mode, Batch.status, Batch.instance_count,
                   Batch.byte_count)
            .join(StorageRoot, StorageRoot.id == Batch.root_id).order_by(StorageRoot.name, Batch.seq))]


def _audit(sessions: sessionmaker[Session]) -> Counter[tuple[Any, ...]]:
    with sessions() as session:
        return Counter(tuple(row) for row in session.execute(
            select(StorageRoot.name, Instance.rel_path, AuditEntry.outcome, AuditEntry.reason)
            .join(Instance, Instance.id == AuditEntry.instance_id)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)))


def _folders(sessions: sessionmaker[Session]) -> list[tuple[str, str, str, str | None, int]]:
    """(root, folder, status, worker node name, attempts) of the latest run."""
    with sessions() as session:
        run_id = session.scalar(select(func.max(IndexRun.id)))
        return [tuple(row) for row in session.execute(
            select(StorageRoot.name, IndexFolder.folder, IndexFolder.status, IndexFolder.worker,
                   IndexFolder.attempts)
            .join(StorageRoot, StorageRoot.id == IndexFolder.root_id)
            .where(IndexFolder.run_id == run_id))]


def _assert_same_as_local(distributed: tuple[sessionmaker[Session], list[RootPlanSummary]],
                          local: tuple[sessionmaker[Session], list[RootPlanSummary]]) -> None:
    (sessions, summaries), (local_sessions, local_summaries) = distributed, local
    assert summaries == local_summaries
    index, local_index = _index(sessions), _index(local_sessions)
    assert index.keys() == local_index.keys()
    for key, fields in index.items():
        assert fields == local_index[key], key
    assert _batches(sessions) == _batches(local_sessions)
    assert _audit(sessions) == _audit(local_sessions)


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """The maximum number of index tasks queued or running per root at a send, read from the state database."""
    observed: Counter[str] = Counter()
    real_sender = distributed_plan.folder_sender

    def counting_sender(settings: Settings) -> distributed_plan.SendFolder:
        send = real_sender(settings)
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))

        def counted(folder_id: int, root: str, folder: str, queue: str) -> None:
            with sessions() as session:
                active = session.scalar(
                    select(func.count(IndexFolder.id)).join(StorageRoot, StorageRoot.id == IndexFolder.root_id)
                    .where(StorageRoot.name == root, IndexFolder.status.in_(ACTIVE))) or 0
            observed[root] = max(observed[root], active)
            send(folder_id, root, folder, queue)

        return counted

    monkeypatch.setattr(distributed_plan, "folder_sender", counting_sender)
    yield observed


def test_matches_local_plan_per_root_workers(worker_processes, in_flight, tmp_path: Path,
                                             postgres_url: str) -> None:
    """Workers index only their roots' folders, a stopped plan resumes, and the result equals a local plan."""
    migration = _distributed_migration(tmp_path, postgres_url, missing_root=True)
    _add_hard_cases(migration, tmp_path)
    config = tmp_path / "migrator.toml"
    start_worker(config, "root1", worker_processes, tmp_path / "worker-root1.log")

    # Only root1 has a worker: the planner times out with root1 indexed and the rest waiting.
    deadline = time.monotonic() + 90
    root1_done = False
    while not root1_done and time.monotonic() < deadline:
        with pytest.raises(IndexingTimedOut):
            index_roots_distributed(migration.settings, migration.sessions, timeout=2, poll_seconds=0.2)
        root1_done = all(status == "done" for root, _, status, _, _ in _folders(migration.sessions)
                         if root == "root1")
    assert root1_done, (tmp_path / "worker-root1.log").read_text()[-3000:]
    folders = _folders(migration.sessions)
    root1_workers = {worker for root, _, _, worker, _ in folders if root == "root1"}
    assert len(root1_workers) == 1
    assert next(iter(root1_workers)).startswith("migrator-root1@")
    assert len([f for f in folders if f[0] == "root1"]) > 5
    others = [f for f in folders if f[0] != "root1"]
    assert {status for _, _, status, _, _ in others} <= {"queued", "pending"}
    assert {worker for _, _, _, worker, _ in others} == {None}

    # A worker for the other roots lets the same run finish.
    start_worker(config, "root2,root3,root4", worker_processes, tmp_path / "worker-others.log")
    summaries = plan(migration.settings, migration.sessions, distributed=True)
    with migration.sessions() as session:
        assert session.scalar(select(func.count(IndexRun.id))) == 1
    folders = _folders(migration.sessions)
    assert {status for _, _, status, _, _ in folders} == {"done"}
    for root, folder, _, worker, _ in folders:
        expected = "migrator-root1@" if root == "root1" else "migrator-root2+root3+root4@"
        assert (worker or "").startswith(expected), (root, folder, worker)
    assert in_flight.keys() == {"root1", "root2", "root3", "root4"}
    assert max(in_flight.values()) <= MAX_INDEX_TASKS

    with postgres_database() as local_url:
        local_settings, local_sessions = _local_twin(tmp_path, migration, local_url)
        local_summaries = plan(local_settings, local_sessions)
        _assert_same_as_local((migration.sessions, summaries), (local_sessions, local_summaries))
    by_root = {s.root: s for s in summaries}
    assert "cannot list the folder" in by_root["root4"].folder_errors[0]
    assert any("outside-link.dcm" in link for link in by_root["root3"].skipped_links)
    assert sum(s.unreadable for s in summaries) == len(migration.expected("unreadable")) + 2


def test_second_plan_finds_nothing_new(worker_processes, tmp_path: Path, postgres_url: str) -> None:
    """A second distributed plan adds nothing; a third finds one new, one changed and one gone file."""
    migration = _distributed_migration(tmp_path, postgres_url)
    config = tmp_path / "migrator.toml"
    start_worker(config, "root1,root2,root3", worker_processes, tmp_path / "worker.log", concurrency=2)
    with postgres_database() as local_url:
        local_settings, local_sessions = _local_twin(tmp_path, migration, local_url)
        first = plan(migration.settings, migration.sessions, distributed=True)
        _assert_same_as_local((migration.sessions, first), (local_sessions, plan(local_settings, local_sessions)))
        ids = _ids(migration.sessions)
        batches = _batches(migration.sessions)

        # The second plan through the command line, as an operator runs it.
        result = subprocess.run([sys.executable, "-m", "migrator", "plan", "--distributed", "--config",
                                 str(config)], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "root1" in result.stdout
        assert _ids(migration.sessions) == ids
        assert _batches(migration.sessions) == batches
        with migration.sessions() as session:
            runs = session.execute(select(IndexRun.id, IndexRun.finished_at).order_by(IndexRun.id)).all()
            assert len(runs) == 2
            assert all(finished is not None for _, finished in runs)
            totals = session.execute(select(func.sum(IndexFolder.new), func.sum(IndexFolder.changed),
                                            func.sum(IndexFolder.gone), func.sum(IndexFolder.files))
                                     .where(IndexFolder.run_id == runs[-1][0])).one()
            # Only the last run's folders are kept.
            assert session.scalar(select(func.count(IndexFolder.id))
                                  .where(IndexFolder.run_id == runs[0][0])) == 0
        assert tuple(totals[:3]) == (0, 0, 0)
        assert totals[3] == sum(s.files for s in first)

        plan(local_settings, local_sessions)  # the twin's second plan
        roots = migration.archive.roots
        sample, changed, removed = migration.expected("main")[:3]
        shutil.copy(roots[sample.root] / sample.rel_path, roots[sample.root] / "late-arrival.dcm")
        os.utime(roots[changed.root] / changed.rel_path, ns=(1_000_000_000, 1_000_000_000))
        (roots[removed.root] / removed.rel_path).unlink()
        third = plan(migration.settings, migration.sessions, distributed=True)
        assert sum(s.new for s in third) == 1
        assert sum(s.changed for s in third) == 1
        assert sum(s.gone for s in third) == 1
        _assert_same_as_local((migration.sessions, third), (local_sessions, plan(local_settings, local_sessions)))


def _ids(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        return {id_: rel_path for id_, rel_path in session.execute(select(Instance.id, Instance.rel_path))}


def test_killed_worker_folder_is_indexed_again(worker_processes, tmp_path: Path, postgres_url: str) -> None:
    """SIGKILL of the process indexing a folder: the folder is indexed again and counted once."""
    migration = _distributed_migration(tmp_path, postgres_url)
    sample = migration.expected("main")[0]
    big = migration.archive.roots["root1"] / "big"
    big.mkdir()
    for number in range(6000):
        os.link(migration.archive.roots[sample.root] / sample.rel_path, big / f"{number:05d}.dcm")
    worker = start_worker(tmp_path / "migrator.toml", "root1,root2,root3", worker_processes,
                          tmp_path / "worker.log")

    outcome: dict[str, Any] = {}

    def run_plan() -> None:
        try:
            outcome["summaries"] = plan(migration.settings, migration.sessions, distributed=True)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    planner = threading.Thread(target=run_plan)
    planner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and planner.is_alive() and time.monotonic() < deadline:
        with migration.sessions() as session:
            owner = session.scalar(select(IndexFolder.lease_owner).where(
                IndexFolder.folder == "big", IndexFolder.status == "running"))
        if owner:
            time.sleep(0.3)  # let the worker reach the files of the folder
            pid = int(owner.rpartition(":")[2])
            if pid in child_pids(worker.pid):
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.05)
    planner.join(timeout=180)
    assert killed, (tmp_path / "worker.log").read_text()[-3000:]
    assert not planner.is_alive()
    assert "error" not in outcome, outcome.get("error")
    big_rows = [f for f in _folders(migration.sessions) if f[1] == "big"]
    assert len(big_rows) == 1
    assert big_rows[0][2] == "done"
    assert big_rows[0][4] == 2
    with postgres_database() as local_url:
        local_settings, local_sessions = _local_twin(tmp_path, migration, local_url)
        local = plan(local_settings, local_sessions)
        _assert_same_as_local((migration.sessions, outcome["summaries"]), (local_sessions, local))
    assert sum(s.new for s in outcome["summaries"]) == len(migration.archive.expected) + 6000
