"""``migrator start`` killed in the middle resumes without sending anything twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from migrator.demo.scp import StorageSCP
from migrator.state.models import AuditEntry, Instance
from scheduler.plan.run import plan
from tests.support import CALLING_AE, prepare_migration


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "migrator", "start", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_start_resumes_after_kill(tmp_path: Path, postgres_url: str) -> None:
    """After SIGKILL mid-run, a second start finishes; at most the in-flight instances repeat."""
    scps = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE], delay=0.15).start()
            for name in ("main", "nonpixel", "sinbin")}
    try:
        migration = prepare_migration(tmp_path, postgres_url,
                                      {n: (s.ae_title, s.port) for n, s in scps.items()}, processes=2)
        plan(migration.settings, migration.sessions)
        config = tmp_path / "migrator.toml"
        first = _start(config)
        deadline = time.monotonic() + 120
        with migration.sessions() as session:
            while time.monotonic() < deadline:
                done = session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.batch_id.is_not(None)))
                session.rollback()
                if done and done >= 8:
                    break
                time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        with migration.sessions() as session:
            pending = session.scalar(select(func.count(Instance.id)).where(Instance.outcome.is_(None)))
        assert pending, "the first run finished before it was killed; the test proves nothing"

        second = _start(config)
        assert second.wait(timeout=300) == 0
    finally:
        for scp in scps.values():
            scp.stop()
    counts = migration.outcome_counts()
    assert None not in counts
    assert counts["failed"] == 0
    # Each killed pool process may have had one C-STORE in flight, sent but not recorded.
    assert len(migration.repeats(scps)) <= migration.settings.run.processes
    with migration.sessions() as session:
        audit_rows = session.scalar(select(func.count(AuditEntry.id)))
    assert audit_rows == len(migration.archive.expected)
