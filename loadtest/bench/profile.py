"""The CPU profile of ``migrator start``: py-spy samples of every process, grouped by pipeline step.

The profile runs once, to the first receiver, on the files of the first
storage root only, so that it adds seconds to the benchmark rather than
minutes. py-spy samples the migrator and its pool processes from outside
(``--nonblocking``, so the processes are not paused), and only threads
that are running count. Each sample goes to the step of the innermost
frame that names one; a sample that names none counts as "other".
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from loadtest.bench.config import RunConfig, write_run_config
from loadtest.bench.contenders import Bench
from loadtest.bench.measure import run_measured
from loadtest.bench.receivers import peer_environment
from loadtest.bench.results import ProfileMeasure

#: Samples per second per process.
SAMPLE_RATE = 250

#: (step, pattern of the function name, pattern of the file or None), checked from the innermost frame out.
STEPS: tuple[tuple[str, str, str | None], ...] = (
    ("interpreter start and imports", r"^_find_and_load$", None),
    ("state database: audit rows and outcomes", r"^write$", r"migrator/audit\.py$"),
    ("state database: claim, lease, finish", r"^(claim|Lease\.\w+|finish_or_retry)$", None),
    ("pynetdicom: encode and send C-STORE, wait for its response", r"^Association\.send_c_store$", None),
    ("pynetdicom: reactor threads (socket polling, PDU decoding)",
     r"^(DULServiceProvider\.run_reactor|Association\._run_reactor|Association\.run_reactor)$", None),
    ("dcmsend engine: feeding and reading dcmsend", r".", r"migrator/dicom/engines/dcmsend\.py$"),
    ("header read up to Pixel Data (pydicom)", r"^read_send_header$", None),
    ("header corrections from the legacy database", r"^run_steps$", None),
    ("writing the corrected file", r"^prepare_file$", None),
    ("reconcile and route (legacy query included)", r"^decide$", None),
    ("dispatcher and process pool", r"^(_dispatch|run_embedded|_process_worker)$", None),
)

_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+):\d+\)$")


def py_spy() -> str | None:
    """Return the py-spy executable, from this interpreter's folder or PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def step_of(stack: str) -> str:
    """Return the step that a py-spy stack (frames separated by ';', outermost first) belongs to."""
    for frame in reversed(stack.split(";")):
        found = _FRAME.match(frame)
        if found is None:
            continue
        for step, function, file in STEPS:
            if re.search(function, found["function"]) and (file is None or re.search(file, found["file"])):
                return step
    return "other"


def aggregate(raw: str) -> tuple[int, dict[str, float]]:
    """Return the sample count and each step's share from py-spy's raw (collapsed stack) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[step_of(stack)] += int(count)
    total = sum(counts.values())
    return total, {step: count / total for step, count in counts.most_common()} if total else {}


def measure_profile(bench: Bench, folder: Path) -> ProfileMeasure:
    """Plan the first root's files on a new SQLite state, then profile ``migrator start`` sending them."""
    root, path = next(iter(bench.archive.roots.items()))
    files = sum(1 for entry in bench.archive.files if entry.root == root)
    measure = ProfileMeasure(root, files, 0)
    executable = py_spy()
    if executable is None:
        measure.problems.append("py-spy not found: install the test extra (pip install -e '.[test]')")
        return measure
    receiver = bench.receiver
    config = write_run_config(folder, {root: path}, bench.archive.legacy_url,
                              RunConfig(f"sqlite:///{folder / 'state.sqlite3'}", receiver.port,
                                        receiver.ae_title, bench.processes))
    migrator = [sys.executable, "-m", "migrator"]
    plan = run_measured([*migrator, "plan", "--config", str(config)], folder / "plan.log", bench.timeout,
                        env=peer_environment())
    if (failure := plan.failure()) is not None:
        measure.problems.append(failure)
        return measure
    receiver.restart()
    output = folder / "py-spy.txt"
    start = run_measured([executable, "record", "--subprocesses", "--nonblocking", "--format", "raw",
                          "--rate", str(SAMPLE_RATE), "--output", str(output), "--",
                          *migrator, "start", "--config", str(config)],
                         folder / "start.log", bench.timeout, env=peer_environment())
    if (failure := start.failure()) is not None:
        measure.problems.append(failure)
    if output.exists():
        measure.samples, measure.shares = aggregate(output.read_text(encoding="utf-8", errors="replace"))
    return measure
