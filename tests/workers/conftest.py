"""Fixtures for tests that start real Celery worker processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.workers.celery_support import stop_process_groups


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes a test starts, each stopped with its process group afterwards."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_process_groups(started)
