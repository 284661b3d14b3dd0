"""Private Redis and PostgreSQL servers that a fault test may stop and restart.

The machine's own Redis and PostgreSQL serve every other test, so a test
that restarts a server runs its own: a ``redis-server`` and a PostgreSQL
cluster made with ``initdb``, each on a free port of 127.0.0.1, stopped by
PID afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from tests.peers import free_port

START_TIMEOUT_SECONDS = 30.0


def _wait(check: Any, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any error means "not up yet"
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT_SECONDS} s; log:\n"
                       f"{log.read_text(errors='replace')[-3000:] if log.exists() else '(no log)'}")


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 without persistence, like the machine's own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait(lambda: redis.Redis.from_url(self.url).ping(), "redis-server", log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; "
                           "install the postgresql package")
    return Path(found[-1]).parent


class PostgresServer:
    """A PostgreSQL cluster of its own on 127.0.0.1, run as the postgres user, trust auth."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = _postgres_bin()
        self._user = pwd.getpwnam("postgres")

    def _run_as_postgres(self, *command: str) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *command], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def init(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        # initdb refuses to run as root, and the postgres user must reach the folder.
        for parent in self.folder.parents:
            mode = os.stat(parent).st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o011)
        shutil.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run_as_postgres(str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust",
                              "-U", "postgres", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
                   "-c fsync=off -c max_connections=200")
        self._run_as_postgres(str(self._bin / "pg_ctl"), "-D", str(self.data), "-l",
                              str(self.folder / "postgres.log"), "-o", options, "-w", "start")
        engine = create_engine(self.url)
        try:
            _wait(lambda: engine.connect().execute(text("SELECT 1")).scalar() == 1, "PostgreSQL",
                  self.folder / "postgres.log")
        finally:
            engine.dispose()
        return self

    def stop(self) -> None:
        """Stop the server at once, closing every client connection (pg_ctl -m immediate)."""
        if (self.data / "postmaster.pid").exists():
            self._run_as_postgres(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                  "-w", "stop")
