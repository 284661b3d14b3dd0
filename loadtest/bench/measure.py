"""Running child processes and measuring their wall time, CPU time and peak memory.

:func:`run_measured` runs a command under :mod:`loadtest.bench.rusage_wrapper`,
which waits for it with ``os.wait4``. That resource usage covers the
command and every descendant that the command itself waited for (Linux
``wait4(2)``): the process pool of ``migrator start`` and the dcmsend
processes of its engine, for example. Processes that keep running
across a measurement, such as Celery workers and receivers, are measured
with :func:`group_cpu_seconds` before and after instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """The resources that one child process tree used."""

    #: Wall-clock seconds from start to exit.
    seconds: float
    user_seconds: float
    system_seconds: float
    #: Largest resident set size of any single process of the tree, in KiB.
    max_rss_kib: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


@dataclass(frozen=True)
class Finished:
    """A child process that ran to its end, or was killed after its timeout."""

    command: list[str]
    exit_code: int
    usage: Usage
    #: The file that received the child's stdout and stderr.
    log: Path
    timed_out: bool

    def failure(self) -> str | None:
        """Describe why the run failed, or return None if it exited with 0 in time."""
        if self.timed_out:
            return f"{self.command[0]} timed out after {self.usage.seconds:.0f} s (log: {self.log})"
        if self.exit_code != 0:
            return f"{' '.join(self.command[:4])} exited with {self.exit_code} (log: {self.log})"
        return None


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``pgid``, which a process started by this module leads."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_measured(command: Sequence[str], log: Path, timeout: float,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Finished:
    """Run ``command`` in a process group of its own, wait for it and measure it.

    stdout and stderr are appended to ``log``. After ``timeout`` seconds
    the whole process group gets SIGKILL. Processes of the group that are
    left after the child exits (none, unless a descendant escaped its
    parent's wait) get SIGKILL too. The wall-clock time includes the start
    of the wrapper's interpreter, about 30 ms.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out = threading.Event()
    usage_path = log.with_name(f"{log.stem}.rusage.json")
    usage_path.unlink(missing_ok=True)
    wrapped = [sys.executable, "-m", "loadtest.bench.rusage_wrapper", str(usage_path), *command]
    with log.open("ab") as stream:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=stream,
                                   stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                                   cwd=cwd, start_new_session=True)

    def expire() -> None:
        timed_out.set()
        kill_group(process.pid)

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        _, status, wrapper_usage = os.wait4(process.pid, 0)
    except BaseException:
        # Ctrl-C or another error in this process: the child must not outlive the benchmark.
        kill_group(process.pid)
        process.wait()
        raise
    finally:
        timer.cancel()
    seconds = time.perf_counter() - started
    # os.wait4 reaped the child, so Popen must not wait for it again.
    process.returncode = os.waitstatus_to_exitcode(status)
    kill_group(process.pid)
    try:
        measured = json.loads(usage_path.read_text(encoding="utf-8"))
        usage = Usage(seconds, float(measured["user_seconds"]), float(measured["system_seconds"]),
                      int(measured["max_rss_kib"]))
    except (OSError, ValueError, KeyError):
        # The wrapper was killed (a timeout) before it wrote the usage. Its own
        # usage then includes the command's CPU time, and its max RSS this process's.
        usage = Usage(seconds, wrapper_usage.ru_utime, wrapper_usage.ru_stime, wrapper_usage.ru_maxrss)
    return Finished(list(command), process.returncode, usage, log, timed_out.is_set())


def group_cpu_seconds(pgid: int) -> float:
    """Return the user and system CPU seconds of every process in group ``pgid``.

    The sum covers the processes that exist now (zombies included) and the
    children they have already reaped, from ``/proc/PID/stat``. A process
    of the group that exited and was reaped by a process outside the group
    is missing from the sum.
    """
    total_ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process exited meanwhile
        # The command name in parentheses may contain spaces; fields after it are plain.
        fields = text[text.rindex(")") + 2:].split()
        # proc(5): field 5 is pgrp; fields 14 to 17 are utime, stime, cutime and cstime.
        if int(fields[2]) != pgid:
            continue
        total_ticks += sum(int(value) for value in fields[11:15])
    return total_ticks / _CLOCK_TICKS


def stop_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a child that leads its own process group: SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is None:
        kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            LOGGER.warning("process group %d did not stop within %.0f s of SIGTERM; sending SIGKILL",
                           process.pid, timeout)
            kill_group(process.pid)
            process.wait()
    kill_group(process.pid)
