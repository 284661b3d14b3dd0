"""The indexing baseline: bare pydicom header reads over the archive's files, on one core."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loadtest.bench.contenders import Archive
from loadtest.bench.measure import run_measured
from loadtest.bench.results import BaselineMeasure


def measure_baseline(archive: Archive, folder: Path, timeout: float) -> BaselineMeasure:
    """Run :mod:`loadtest.bench.dcmread_baseline` over every file of the archive.

    Raises
    ------
    RuntimeError
        The baseline process failed or timed out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    file_list = folder / "files.txt"
    file_list.write_text("".join(f"{archive.roots[entry.root] / entry.path}\n" for entry in archive.files),
                         encoding="utf-8")
    output = folder / "baseline.json"
    finished = run_measured([sys.executable, "-m", "loadtest.bench.dcmread_baseline", str(file_list),
                             str(output)], folder / "baseline.log", timeout)
    if (failure := finished.failure()) is not None:
        raise RuntimeError(failure)
    measured = json.loads(output.read_text(encoding="utf-8"))
    return BaselineMeasure(int(measured["files"]), float(measured["seconds"]),
                           float(measured["cpu_seconds"]))
