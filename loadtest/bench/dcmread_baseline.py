"""The indexing baseline: read the header of every listed file with pydicom in this one process.

``python -m loadtest.bench.dcmread_baseline FILE_LIST RESULT_JSON`` reads
each path of FILE_LIST (one a line) with ``pydicom.dcmread(path,
stop_before_pixels=True)`` and writes the file count, the wall-clock
seconds and this process's CPU seconds of the loop to RESULT_JSON. The
interpreter's start is left out.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pydicom


def read_headers(paths: list[str]) -> dict[str, float]:
    """Read every file's header and return the count, wall seconds and CPU seconds."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path, stop_before_pixels=True)
    return {"files": len(paths), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started}


def main(arguments: list[str]) -> None:
    if len(arguments) != 2:
        sys.exit("usage: python -m loadtest.bench.dcmread_baseline FILE_LIST RESULT_JSON")
    paths = Path(arguments[0]).read_text(encoding="utf-8").splitlines()
    Path(arguments[1]).write_text(json.dumps(read_headers(paths)), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
