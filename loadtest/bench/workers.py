"""``migrator worker`` processes for the Celery contender."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loadtest.bench.measure import group_cpu_seconds, stop_group
from loadtest.bench.receivers import peer_environment

#: Celery 5 logs "NODENAME ready." once a worker consumes from its queues.
READY_MARK = " ready."
READY_TIMEOUT_SECONDS = 120.0


class WorkerError(RuntimeError):
    """Error raised when a worker exits or does not become ready."""


class Workers:
    """Started ``migrator worker`` processes, each leading a process group of its own."""

    def __init__(self, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
        self.processes = processes
        self.logs = logs

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        waiting = list(zip(self.processes, self.logs))
        while waiting:
            for process, log in list(waiting):
                if process.poll() is not None:
                    raise WorkerError(f"migrator worker exited with code {process.returncode} during "
                                      f"startup; see {log}")
                if READY_MARK in log.read_text(errors="replace"):
                    waiting.remove((process, log))
            if time.monotonic() > deadline:
                raise WorkerError(f"{len(waiting)} migrator worker(s) were not ready within "
                                  f"{READY_TIMEOUT_SECONDS:.0f} s; see {', '.join(str(log) for _, log in waiting)}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """Return the CPU seconds of every worker process and its pool processes so far."""
        return sum(group_cpu_seconds(process.pid) for process in self.processes)


@contextmanager
def running_workers(config: Path, roots: list[str], count: int, folder: Path) -> Iterator[Workers]:
    """Start ``count`` workers with one pool process each, every one serving every root.

    Each worker gets the roots in another order, because the Celery node
    name is made of them and must differ between workers.
    """
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for index in range(count):
            order = roots[index:] + roots[:index]
            log = folder / f"worker-{index + 1}.log"
            with log.open("wb") as stream:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "migrator", "worker", "--config", str(config),
                     "--roots", ",".join(order), "--concurrency", "1"],
                    stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                    env=peer_environment(), start_new_session=True))
            logs.append(log)
        workers = Workers(processes, logs)
        workers.wait_until_ready()
        yield workers
    finally:
        for process in processes:
            stop_group(process)
