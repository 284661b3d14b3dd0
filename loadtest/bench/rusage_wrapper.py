"""Run a command and write the resource usage of its process tree as JSON.

``python -m loadtest.bench.rusage_wrapper RESULT_JSON COMMAND...`` runs
COMMAND as a child, waits for it with ``os.wait4`` and writes its user and
system CPU seconds and its max RSS to RESULT_JSON, then exits with its exit
code (128 + N after signal N).

A parent's own peak RSS leaks into a child's ``ru_maxrss``: Linux keeps
the peak of the memory that a process replaces at ``execve``, which for a
child started with fork or vfork is a copy or the parent's own. Started
from this small process, the command reports its own peak, or this
process's (about 10 MiB) if that is larger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main(arguments: list[str]) -> int:
    if len(arguments) < 2:
        sys.exit("usage: python -m loadtest.bench.rusage_wrapper RESULT_JSON COMMAND...")
    result_path, command = Path(arguments[0]), arguments[1:]
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    result_path.write_text(json.dumps({"user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime,
                                       "max_rss_kib": usage.ru_maxrss}), encoding="utf-8")
    code = process.returncode
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
