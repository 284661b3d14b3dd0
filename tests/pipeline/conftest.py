"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes a test starts; any still running at the end are killed with their group."""
    processes: list[subprocess.Popen[Any]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
