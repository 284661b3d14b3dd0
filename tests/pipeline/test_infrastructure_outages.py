"""Embedded runs that meet an outage: the destination, a storage root, the state database's disk.

Each test runs ``migrator start`` as an operator would, checks the exit
status and the message, then recovers and runs it again. Afterwards every
file must have exactly the outcome the demo archive expects, and no
instance may have reached a destination twice.

The scale is small: a destination "down for minutes" is down for a whole
run with ``backoff_seconds = 1`` and one retry, and the full disk is a
64 MiB tmpfs under the test's folder that contains the data folder of a
private PostgreSQL cluster (tests/servers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from migrator.config import load_settings
from migrator.demo.archive import build_demo_archive
from migrator.demo.run import DELIVERED_AS, write_config
from migrator.demo.scp import StorageSCP
from migrator.dicom.read import FILE_GONE
from migrator.errors import StorageRootError
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Batch, Instance, StorageRoot
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import free_port
from tests.servers import PostgresServer
from tests.support import CALLING_AE, Migration, prepare_migration, running_scps

#: Wide enough that rich folds no log line or message.
WIDE_OUTPUT = {**os.environ, "COLUMNS": "1000"}



def _migrator(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *arguments, "--config", str(config)],
                          capture_output=True, text=True, timeout=180, env=WIDE_OUTPUT)


def _start_in_background(config: Path, log: Path, started: list[subprocess.Popen[Any]],
                         *arguments: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "migrator", "start", *arguments, "--config", str(config)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=WIDE_OUTPUT, start_new_session=True)
    started.append(process)
    return process


def _wait_for(condition: Callable[[], bool], description: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {description}")
        time.sleep(0.05)


def _prepare(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP], studies: int,
             max_instances: int = 20) -> Migration:
    """Build a demo archive of ``studies`` studies aimed at ``scps``, and plan it."""
    archive = build_demo_archive(tmp_path / "archive", studies=studies)
    endpoints = {name: (scp.ae_title, scp.port) for name, scp in scps.items()}
    config = write_config(tmp_path, archive, endpoints, processes=2, state_url=state_url)
    config.write_text(config.read_text().replace("max_instances = 20", f"max_instances = {max_instances}")
                      + "\n[retries]\nmax_retries = 0\nbackoff_seconds = 1\n")
    settings = load_settings(config)
    migration = Migration(archive, settings, open_state(settings.state.sqlalchemy_url(settings.base_dir)))
    plan(settings, migration.sessions)
    return migration


def _assert_all_as_expected(migration: Migration) -> None:
    outcomes = migration.outcomes()
    wrong = {(e.root, e.rel_path): outcomes[(e.root, e.rel_path)] for e in migration.archive.expected
             if outcomes[(e.root, e.rel_path)] != DELIVERED_AS[e.destination]}
    assert wrong == {}


def _audit_rows_per_delivered_instance(migration: Migration) -> Counter[int]:
    """How many instances that were sent or sinbinned have each number of audit rows."""
    with migration.sessions() as session:
        rows = session.execute(
            select(func.count(AuditEntry.id)).join(Instance, Instance.id == AuditEntry.instance_id)
            .where(Instance.outcome.in_(["sent", "sinbinned"])).group_by(Instance.id))
        return Counter(count for (count,) in rows)


def _arrivals(scps: dict[str, StorageSCP]) -> int:
    return sum(len(scp.arrivals) for scp in scps.values())


class TestDestinationDown:
    """The main destination refuses every association: nothing listens on its port."""

    def test_whole_run_fails_then_retry_failed_sends(self, tmp_path: Path, sqlite_url: str) -> None:
        """The run ends with the images failed as transient; --retry-failed sends each once."""
        port = free_port()
        with running_scps(tmp_path) as scps:
            endpoints = {name: (scp.ae_title, scp.port) for name, scp in scps.items()}
            endpoints["main"] = ("MAIN", port)
            migration = prepare_migration(tmp_path, sqlite_url, endpoints, max_retries=1,
                                          backoff_seconds=1)
            plan(migration.settings, migration.sessions)
            config = tmp_path / "migrator.toml"

            first = _migrator(config, "start")
            assert first.returncode == 1, first.stderr
            output = " ".join(first.stderr.split())
            assert f"destination main (MAIN@127.0.0.1:{port}) refused the connection" in output
            assert "still failed after 1 automatic retries" in output
            assert "'migrator start --retry-failed' tries them again" in output
            assert "Traceback" not in output
            images = migration.expected("main")
            outcomes = migration.outcomes()
            assert {outcomes[(e.root, e.rel_path)] for e in images} == {"failed"}
            for expected in images:
                entries = migration.audit_of(expected)
                assert [entry.outcome for entry in entries] == ["failed", "failed"]
                assert all(entry.transient for entry in entries)
                assert all(f"MAIN@127.0.0.1:{port}" in (entry.reason or "") for entry in entries)
            others = [e for e in migration.archive.expected if e.destination != "main"]
            assert all(outcomes[(e.root, e.rel_path)] == DELIVERED_AS[e.destination] for e in others)

            again = _migrator(config, "start")
            assert again.returncode == 1
            assert (f"'migrator start --retry-failed' for the {len(images)} failed instance(s)"
                    in " ".join(again.stderr.split()))

            with StorageSCP("MAIN", tmp_path / "main", [CALLING_AE], port=port) as main:
                retried = _migrator(config, "start", "--retry-failed")
                assert retried.returncode == 0, retried.stderr
                assert sorted(main.arrivals) == sorted(e.sop_instance_uid for e in images)
        _assert_all_as_expected(migration)
        assert migration.repeats({**scps, "main": main}) == {}

    def test_destination_back_during_retries(self, tmp_path: Path, sqlite_url: str) -> None:
        """A destination that starts while a retry is pending receives every image in that run."""
        port = free_port()
        main = StorageSCP("MAIN", tmp_path / "main", [CALLING_AE], port=port)
        with running_scps(tmp_path) as scps:
            endpoints = {name: (scp.ae_title, scp.port) for name, scp in scps.items()}
            endpoints["main"] = ("MAIN", port)
            migration = prepare_migration(tmp_path, sqlite_url, endpoints, max_retries=5,
                                          backoff_seconds=1)
            plan(migration.settings, migration.sessions)
            stop = threading.Event()

            def start_main_after_first_failure() -> None:
                while not stop.wait(0.1):
                    with migration.sessions() as session:
                        if session.scalar(select(AuditEntry.id).where(AuditEntry.destination == "main")):
                            main.start()
                            return

            starter = threading.Thread(target=start_main_after_first_failure)
            starter.start()
            try:
                result = _migrator(tmp_path / "migrator.toml", "start")
            finally:
                stop.set()
                starter.join()
                main.stop()
        assert result.returncode == 0, result.stderr
        _assert_all_as_expected(migration)
        images = migration.expected("main")
        assert sorted(main.arrivals) == sorted(e.sop_instance_uid for e in images)
        failures = [entry for e in images for entry in migration.audit_of(e) if entry.outcome == "failed"]
        assert failures, "no attempt met the destination down"
        assert all(entry.transient for entry in failures)
        assert migration.repeats({**scps, "main": main}) == {}


class TestStorageRootGone:
    def test_missing_root_stops_before_sending(self, tmp_path: Path, sqlite_url: str,
                                               scps: dict[str, StorageSCP]) -> None:
        """A root that is missing or empty at the start stops the run with one message."""
        migration = prepare_migration(tmp_path, sqlite_url,
                                      {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
        plan(migration.settings, migration.sessions)
        root2 = migration.archive.roots["root2"]
        with migration.sessions() as session:
            root2_batches = session.scalar(select(func.count(Batch.id)).join(StorageRoot)
                                           .where(StorageRoot.name == "root2"))
        root2.rename(root2.with_name("root2.unmounted"))

        missing = _migrator(tmp_path / "migrator.toml", "start")
        assert missing.returncode == 1
        output = " ".join(missing.stderr.split())
        assert (f"error: storage root root2 ({root2}) was not found, and {root2_batches} planned "
                "batch(es) read from it: check that it is mounted at that path. Nothing was sent"
                in output), output
        assert "Traceback" not in output

        root2.mkdir()  # the mount point of an unmounted file system
        with pytest.raises(StorageRootError, match=rf"storage root root2 \({root2}\) is empty"):
            run_embedded(migration.settings, migration.sessions)
        assert _arrivals(scps) == 0
        assert set(migration.outcome_counts()) == {None, "unreadable"}

        root2.rmdir()
        root2.with_name("root2.unmounted").rename(root2)
        run_embedded(migration.settings, migration.sessions)
        _assert_all_as_expected(migration)
        assert migration.repeats(scps) == {}

    def test_root_vanishes_mid_run(self, started: list[subprocess.Popen[Any]], tmp_path: Path,
                                   sqlite_url: str) -> None:
        """Files of a root that vanishes fail with the mount hint, the run stops, --retry-failed sends them."""
        with running_scps(tmp_path, delay=0.2) as scps:
            migration = _prepare(tmp_path, sqlite_url, scps, studies=11, max_instances=4)
            config = tmp_path / "migrator.toml"
            root1 = migration.archive.roots["root1"]
            log = tmp_path / "start.log"
            run = _start_in_background(config, log, started)

            def root1_batch_half_done() -> bool:
                with migration.sessions() as session:
                    counts = session.execute(
                        select(func.count(Instance.outcome), func.count(Instance.id))
                        .join(Batch, Batch.id == Instance.batch_id).join(StorageRoot)
                        .where(StorageRoot.name == "root1", Batch.status == "running")).one()
                return counts[0] >= 1 and counts[1] - counts[0] >= 2

            _wait_for(root1_batch_half_done, "a root1 batch in the middle of sending")
            root1.rename(root1.with_name("root1.unmounted"))
            assert run.wait(timeout=120) == 1
            output = " ".join(log.read_text().split())
            assert f"error: storage root root1 ({root1}) was not found" in output, output
            assert "'migrator start --retry-failed' sends them and the instances still pending" in output
            assert "Traceback" not in output

            outcomes = migration.outcomes()
            failed = [e for e in migration.archive.expected if outcomes[(e.root, e.rel_path)] == "failed"]
            assert failed, "no file of root1 failed"
            assert {e.root for e in failed} == {"root1"}
            for expected in failed:
                reason = migration.audit_of(expected)[-1].reason or ""
                assert reason == f"{root1 / expected.rel_path}: {FILE_GONE}"
            arrived = Counter(uid for scp in scps.values() for uid in scp.arrivals)
            assert not {e.sop_instance_uid for e in failed} & set(arrived)
            delivered = {e.sop_instance_uid for e in migration.archive.expected
                         if outcomes[(e.root, e.rel_path)] in ("sent", "sinbinned")}
            assert set(arrived) == delivered
            assert None in outcomes.values(), "the run did not stop before the last batch"

            status = _migrator(config, "status", "--failed", "50")
            assert status.returncode == 0
            assert status.stdout.count("check that the storage root is mounted") == len(failed)

            root1.with_name("root1.unmounted").rename(root1)
            for scp in scps.values():
                scp.delay = 0.0
            retried = _migrator(config, "start", "--retry-failed")
            assert retried.returncode == 0, retried.stderr
        _assert_all_as_expected(migration)
        assert migration.repeats(scps) == {}


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {folder} ({mounted.stderr.strip()}); the test needs "
                    "root with CAP_SYS_ADMIN")


def _fill(folder: Path) -> Path:
    """Write zeros to a new file in ``folder`` until its file system is full; return the file."""
    filler = folder / "filler"
    chunk = bytes(1 << 20)
    with filler.open("wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.strerror == "No space left on device", exc
    return filler


def _accepts_connections(url: str) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    except Exception:  # noqa: BLE001 - any error means the server is not up
        return False
    finally:
        engine.dispose()


@pytest.mark.timeout(300)
def test_state_database_disk_full(started: list[subprocess.Popen[Any]], tmp_path: Path) -> None:
    """A full disk under PostgreSQL pauses the run with a message; it goes on once there is space."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64m")
    postgres: PostgresServer | None = None
    migration: Migration | None = None
    try:
        postgres = PostgresServer(disk / "postgres").init().start()
        admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE state"))
        admin.dispose()
        state_url = postgres.url.rsplit("/", 1)[0] + "/state"
        with running_scps(tmp_path, delay=0.2) as scps:
            migration = _prepare(tmp_path, state_url, scps, studies=11)
            log = tmp_path / "start.log"
            run = _start_in_background(tmp_path / "migrator.toml", log, started)
            _wait_for(lambda: _arrivals(scps) >= 2, "the first deliveries")
            filler = _fill(disk)

            _wait_for(lambda: "the state database cannot record outcomes" in log.read_text(),
                      "the run to report the full disk", seconds=60)
            time.sleep(1)  # the other pool process meets the full disk too
            held_at = _arrivals(scps)
            time.sleep(3)
            assert _arrivals(scps) == held_at, "instances were sent while no outcome could be recorded"
            assert run.poll() is None, log.read_text()

            filler.unlink()
            restarted = not _accepts_connections(state_url)
            if restarted:
                # PostgreSQL stops when it cannot write its WAL; it starts again with space.
                postgres.start()
            assert run.wait(timeout=120) == 0, log.read_text()
            output = " ".join(log.read_text().split())
            assert ("the state database cannot record outcomes (could not extend file" in output
                    or restarted), output
            assert "free space on the state database's disk" in output or restarted
            assert "Traceback" not in output

            again = _migrator(tmp_path / "migrator.toml", "start")
            assert again.returncode == 0, again.stderr
            assert "nothing to migrate" in again.stderr
        _assert_all_as_expected(migration)
        # Without a restart every sent instance was recorded once; a restart
        # may repeat the C-STORE each pool process had in flight.
        assert len(migration.repeats(scps)) <= (migration.settings.run.processes if restarted else 0)
        assert set(_audit_rows_per_delivered_instance(migration)) == {1}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if migration is not None:
            migration.sessions.kw["bind"].dispose()
        if postgres is not None:
            postgres.stop()
        if subprocess.run(["umount", str(disk)]).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)
