"""Starting and stopping real ``migrator worker`` processes, and a broker section of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("MIGRATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")


def add_broker(config: Path, **options: int) -> str:
    """Append a [broker] section whose queues only this test uses; return its queue prefix."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    lines = ["", "[broker]", f'url = "{REDIS_URL}"', f'queue_prefix = "{prefix}"']
    lines += [f"{key} = {value}" for key, value in options.items()]
    with config.open("a", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return prefix


def start_worker(config: Path, roots: str, started: list[subprocess.Popen[Any]], log: Path,
                 concurrency: int = 1) -> subprocess.Popen[Any]:
    """Start ``migrator worker`` for ``roots`` in a process group of its own."""
    process = subprocess.Popen(
        [sys.executable, "-m", "migrator", "worker", "--config", str(config), "--roots", roots,
         "--concurrency", str(concurrency)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    started.append(process)
    return process


def stop_process_groups(started: list[subprocess.Popen[Any]]) -> None:
    """Stop each process group with SIGTERM, then SIGKILL after 20 seconds."""
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def child_pids(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]
