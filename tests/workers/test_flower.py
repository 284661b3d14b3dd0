"""Flower started as the Flower unit of deploy/systemd starts it, watching a real distributed run."""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.models import Batch, IndexFolder, StorageRoot
from scheduler.dispatch.distributed import run_distributed
from scheduler.plan.run import plan
from tests.support import prepare_migration
from tests.workers.celery_support import add_broker, start_worker

REPO = Path(__file__).resolve().parents[2]
FLOWER_UNIT = REPO / "deploy" / "systemd" / "migrator-flower.service"
DEPLOYED_CELERY = "/opt/migrator/venv/bin/celery"
DEPLOYED_PORT = "--port=5555"
ROOTS = ["root1", "root2", "root3"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _flower_command(port: int) -> list[str]:
    """Return the unit's ExecStart with this venv's celery and ``port``, as systemd would run it."""
    lines = [line for line in FLOWER_UNIT.read_text(encoding="utf-8").splitlines()
             if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{FLOWER_UNIT} must have one ExecStart line"
    command = lines[0].removeprefix("ExecStart=")
    assert DEPLOYED_CELERY in command
    assert DEPLOYED_PORT in command
    # systemd passes "$$" on as "$" for the shell to expand.
    command = command.replace("$$", "$").replace(DEPLOYED_CELERY, str(Path(sys.executable).with_name("celery")))
    return shlex.split(command.replace(DEPLOYED_PORT, f"--port={port}"))


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Credentials and a launcher for Flower. The test stops the process by its PID afterwards."""
    started: dict[str, Any] = {"user": "reviewer", "password": secrets.token_urlsafe(16), "port": _free_port()}

    def launch(config: Path) -> subprocess.Popen[Any]:
        environment = dict(os.environ, MIGRATOR_CONFIG=str(config), FLOWER_USER=started["user"],
                           FLOWER_PASSWORD=started["password"])
        process = subprocess.Popen(_flower_command(started["port"]), cwd=tmp_path, env=environment,
                                   stdout=(tmp_path / "flower.log").open("w"), stderr=subprocess.STDOUT)
        started["process"] = process
        return process

    started["launch"] = launch
    yield started
    process = started.get("process")
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for(check: Any, seconds: float, message: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(message)


def test_flower_shows_tasks_per_root(worker_processes, flower, scps: dict[str, StorageSCP], tmp_path: Path,
                                     postgres_url: str) -> None:
    """Flower rejects requests without credentials and lists each root's index and batch tasks."""
    migration = prepare_migration(tmp_path, postgres_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
    config = tmp_path / "migrator.toml"
    config.write_text(config.read_text().replace("max_instances = 20", "max_instances = 5"))
    prefix = add_broker(config, max_in_flight_per_root=2)
    migration.settings = settings = load_settings(config)
    worker_name_prefix = "migrator-root1+root2+root3@"
    start_worker(config, ",".join(ROOTS), worker_processes, tmp_path / "worker.log", concurrency=2)
    process = flower["launch"](config)
    base = f"http://127.0.0.1:{flower['port']}"
    auth = (flower["user"], flower["password"])

    def flower_log() -> str:
        return (tmp_path / "flower.log").read_text()[-3000:]

    def answers() -> bool:
        try:
            requests.get(f"{base}/api/tasks", timeout=2)
        except requests.ConnectionError:
            assert process.poll() is None, flower_log()
            return False
        return True

    _wait_for(answers, 60, f"Flower did not answer on {base}: {flower_log()}")
    # The password reaches Flower through FLOWER_BASIC_AUTH, not the command line.
    assert flower["password"] not in Path(f"/proc/{process.pid}/cmdline").read_text()

    # Flower must receive the worker's heartbeat events before any task runs.
    def worker_alive() -> bool:
        status = requests.get(f"{base}/api/workers", params={"status": "true"}, auth=auth, timeout=5).json()
        return any(name.startswith(worker_name_prefix) and alive for name, alive in status.items())

    _wait_for(worker_alive, 60, f"Flower saw no worker events: {flower_log()}")

    plan(settings, migration.sessions, distributed=True)
    pending = run_distributed(settings, migration.sessions, timeout=120, poll_seconds=0.5)
    assert pending == 0, (tmp_path / "worker.log").read_text()[-3000:]
    with migration.sessions() as session:
        batches = Counter(dict(session.execute(
            select(StorageRoot.name, func.count(Batch.id)).join(StorageRoot, StorageRoot.id == Batch.root_id)
            .group_by(StorageRoot.name)).all()))
        folders = Counter(dict(session.execute(
            select(StorageRoot.name, func.count(IndexFolder.id))
            .join(StorageRoot, StorageRoot.id == IndexFolder.root_id).group_by(StorageRoot.name)).all()))
    assert set(batches) == set(ROOTS)

    assert requests.get(f"{base}/api/tasks", timeout=5).status_code == 401
    assert requests.get(f"{base}/api/tasks", auth=(flower["user"], "wrong"), timeout=5).status_code == 401
    assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{base}/workers", timeout=5, allow_redirects=False).status_code == 401
    # Flower 2.2 serves its Prometheus metrics without credentials, as the README states.
    assert requests.get(f"{base}/metrics", timeout=5).status_code == 200

    def succeeded_per_name() -> Counter[str] | None:
        response = requests.get(f"{base}/api/tasks", params={"state": "SUCCESS"}, auth=auth, timeout=5)
        assert response.status_code == 200
        tasks = response.json().values()
        counts = Counter(task["name"] for task in tasks)
        migrated = sum(n for name, n in counts.items() if name.startswith("migrator.migrate_batch"))
        return counts if migrated == sum(batches.values()) else None

    counts = _wait_for(succeeded_per_name, 30, f"Flower did not list every batch task: {flower_log()}")
    for root in ROOTS:
        queue = f"{prefix}.{root}"
        assert counts[f"migrator.migrate_batch[{queue}]"] == batches[root], counts
        assert counts[f"migrator.index_folder[{queue}]"] == folders[root], counts
    assert set(counts) == ({f"migrator.migrate_batch[{prefix}.{root}]" for root in ROOTS}
                           | {f"migrator.index_folder[{prefix}.{root}]" for root in ROOTS})

    # The dashboard filters by these names, so each root's throughput shows on its own.
    root1 = f"migrator.migrate_batch[{prefix}.root1]"
    listed = requests.get(f"{base}/api/tasks", params={"taskname": root1}, auth=auth, timeout=5).json()
    assert len(listed) == batches["root1"]
    for task in listed.values():
        assert task["state"] == "SUCCESS"
        assert task["worker"].startswith(worker_name_prefix)
        assert task["received"] is not None
        assert task["runtime"] is not None
    index_tasks = requests.get(f"{base}/api/tasks", params={"taskname": f"migrator.index_folder[{prefix}.root1]"},
                               auth=auth, timeout=5).json()
    # The planner's app sends task-sent events, so Flower records when each folder was queued.
    assert all(task["sent"] is not None for task in index_tasks.values())
