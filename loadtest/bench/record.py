"""The section that ``python -m loadtest bench --append`` adds to BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench.profile import SAMPLE_RATE
from loadtest.bench.report import (
    INDEXING_COLUMNS,
    PROFILE_COLUMNS,
    SCALE_COLUMNS,
    STATE_SIZE_COLUMNS,
    THROUGHPUT_COLUMNS,
    cut_rows_per_second,
    indexing_rows,
    markdown_table,
    problem_lines,
    profile_rows,
    run_label,
    scale_rows,
    state_size_rows,
    state_size_run,
    throughput_rows,
)
from loadtest.bench.results import BenchResults, RunResult

#: The archive size that the design targets, for the estimates.
TARGET_INSTANCES = 150_000_000
#: Worker machines in the throughput estimate.
MACHINE_COUNTS = (1, 2, 4, 8, 16, 32)
#: Bytes per second of a 1 Gbit/s link, without protocol overhead.
GIGABIT_BYTES_PER_SECOND = 125e6
STATE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _loads(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _header(results: BenchResults) -> list[str]:
    machine, versions, data = results.machine, results.versions, results.data
    return [
        f"## Migration throughput, {results.started[:10]} ({data.get('instances', 0):,} instances)",
        "",
        f"`{results.command}`, from {results.started} to {results.finished} (UTC).",
        "",
        f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory')}, "
        f"{machine.get('disk')}; virtual machine: {machine.get('virtual machine')}; "
        f"Linux {machine.get('kernel')}.",
        f"- Load average (1, 5, 15 minutes): {_loads(results.load_average_start)} at the start, "
        f"{_loads(results.load_average_end)} at the end. Other developers' jobs shared the machine; "
        "each row's load column is the 1-minute load average when its measured phase started.",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".",
        f"- Data: {data.get('instances', 0):,} instances in {data.get('files', 0):,} files, "
        f"{data.get('bytes', 0) / 1e9:.2f} GB (file sizes {data.get('min_kb', 0):.0f} to "
        f"{data.get('max_kb', 0):.0f} kB, mean {data.get('mean_kb', 0):.0f} kB), {data.get('studies', 0)} "
        f"studies on {data.get('roots', 0)} roots, `python -m loadtest generate` with seed "
        f"{data.get('seed')}: JPEG 2000 lossless CT images and {data.get('nonpixel', 0)} SR and KOS "
        "documents. Every contender read the files from the page cache, because they were written "
        "just before.",
        f"- Receivers: `{data.get('storescp_command')}` and Orthanc (its own storage folder, "
        "`StorageCompression` false), both with `TCP_NODELAY=1`, restarted with empty storage before "
        "each row. The migrator's main, non-pixel and sin bin destinations are all the receiver, so "
        "every contender stores every file there.",
        f"- Migrator: `run.processes = {data.get('processes')}`, embedded runs with the state on "
        f"{STATE_NAMES.get(str(data.get('embedded_state')), data.get('embedded_state'))}; the Celery run "
        f"with {data.get('celery_workers')} × `migrator worker --concurrency 1`, the state on PostgreSQL "
        "and the broker on Redis.",
        "",
    ]


def _throughput(results: BenchResults) -> list[str]:
    lines = ["### Throughput", ""]
    lines += markdown_table(THROUGHPUT_COLUMNS, throughput_rows(results))
    lines += [
        "",
        "start s is the wall-clock time of storescu, or of `migrator start` after `migrator plan`. "
        "images/h and MB/s count the files the receiver stored in that time. CPU s/image is the user "
        "and system CPU of the contender's processes per file: storescu; `migrator start` with its "
        "process pool and dcmsend children; or the Celery dispatcher plus the workers during the run. "
        "The receiver's CPU is in its own column. × storescu divides images/s by that of the storescu "
        "row to the same receiver. The spread is each study's time from its first to its last "
        "instance stored at the main and non-pixel destinations. A valid row has outcomes equal to "
        "the manifest and the receiver's count equal to the instances delivered. An invalid row "
        "still shows what was measured.",
        "",
    ]
    problems = problem_lines(results)
    if problems:
        lines += ["Why rows are invalid or not available, and the C-STORE attempts that failed before "
                  "an instance's final outcome (an automatic retry repeated them):", ""]
        lines += [f"- {line}" for line in problems] + [""]
    return lines


def _indexing(results: BenchResults) -> list[str]:
    if not results.plans() and results.baseline is None:
        return []
    return ["### Indexing", "",
            *markdown_table(INDEXING_COLUMNS, indexing_rows(results)), "",
            "Each `migrator plan` indexed the whole archive into a new state database (header parsing "
            "on a pool of `run.processes` processes, inserts included), checked it for collisions and "
            "cut its batches. Plan s and plan files per CPU-second cover that whole command: the "
            "user and system CPU of its process tree, the interpreter's start included. Indexing s "
            "and files per CPU-second are the indexing phase that the plan reports: the walk, the "
            "header parsing and the database writes, leaving out the interpreter's start and that of "
            "the parsing processes. The dcmread row reads the same files in one process and also "
            "leaves out the interpreter's start. Max RSS is the largest process of the plan's tree.", ""]


def _scale(results: BenchResults) -> list[str]:
    if not results.scale:
        return []
    return ["### Planner with synthetic index rows", "",
            *markdown_table(SCALE_COLUMNS, scale_rows(results)), "",
            "Measured: the storage root is a tree of hard links, 1,000 per folder, to copies of one "
            "generated CT file. The PostgreSQL state database receives one index row per link, with its "
            "size and modification time, by COPY, followed by ANALYZE. The first `migrator plan` walks "
            "the tree, finds every file unchanged, parses none, and cuts every row into stripe batches "
            "of 150-instance studies. The re-plan walks the unchanged tree again with nothing left to "
            "cut. cut rows/s divides the rows by the difference of the two plans' times, so it is an "
            "estimate. Max RSS is that of the `migrator plan` process, which starts no pool process "
            "when it has nothing to parse.", ""]


def _state_size(results: BenchResults) -> list[str]:
    run = state_size_run(results)
    if run is None:
        return []
    return [f"### State database size after {run_label(run)}", "",
            *markdown_table(STATE_SIZE_COLUMNS, state_size_rows(run)), "",
            "Measured with `pg_total_relation_size` (heap, indexes and TOAST) after the run, and again "
            "after VACUUM FULL removed the row versions that the run's updates left behind.", ""]


def _per_machine_run(results: BenchResults) -> RunResult | None:
    """Return the Celery, embedded or dcmsend run, in this order, with the least CPU per image.

    Valid runs come first. An invalid run still measured its CPU time,
    for example when a retried C-STORE was stored twice.
    """
    for valid_only in (True, False):
        for contender in ("celery", "embedded", "dcmsend"):
            runs = [run for run in results.runs if run.contender == contender and run.cpu_per_image
                    and (run.valid or not valid_only)]
            if runs:
                return min(runs, key=lambda run: run.cpu_per_image or 0.0)
    return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds < 72 * 3600 else f"{seconds / 86400:,.1f} days"


def _paper_state(results: BenchResults) -> list[str]:
    run = state_size_run(results)
    if run is None or run.state_sizes is None or run.state_sizes_vacuumed is None:
        return []
    per_thousand = sum(run.state_sizes.values()) / (run.instances / 1000)
    compact = sum(run.state_sizes_vacuumed.values()) / (run.instances / 1000)
    scale = TARGET_INSTANCES / 1000
    audit_rows = run.instances + sum(run.failed_attempts.values())
    return [f"- State database: {per_thousand / 1e6:.2f} MB per 1,000 files as left by the run, "
            f"{compact / 1e6:.2f} MB after VACUUM FULL (measured, {audit_rows:,} audit rows for "
            f"{run.instances:,} files). "
            f"For {TARGET_INSTANCES / 1e6:,.0f} million files: about {per_thousand * scale / 1e9:,.0f} GB "
            f"and {compact * scale / 1e9:,.0f} GB (estimate, linear; retries add an audit row per attempt)."]


def _paper_planner(results: BenchResults) -> list[str]:
    lines = []
    plans = [plan for plan in results.plans() if plan.state == "postgresql"] or results.plans()
    if plans:
        plan = plans[0]
        cpu = TARGET_INSTANCES / plan.files_per_cpu_second
        wall = TARGET_INSTANCES / plan.files_per_second
        lines.append(
            f"- Indexing: {plan.files_per_cpu_second:,.0f} files per CPU-second and "
            f"{plan.files_per_second:,.0f} files/s with `run.processes = {plan.processes}` (measured, "
            f"`migrator plan` on {STATE_NAMES.get(plan.state, plan.state)}, files in the page cache). "
            f"For {TARGET_INSTANCES / 1e6:,.0f} million files: "
            f"{cpu / 3600:,.0f} CPU-hours, {_hours(wall)} at this machine's rate (estimate; reading 30 TB "
            "from the storage servers instead of the page cache may take longer).")
    largest = max(results.scale, key=lambda measure: measure.rows, default=None)
    if largest is not None and not largest.problems:
        factor = TARGET_INSTANCES / largest.rows
        cut_rate = cut_rows_per_second(largest)
        cutting = (f"cutting at {cut_rate:,.0f} rows/s takes {_hours(TARGET_INSTANCES / cut_rate)}, "
                   if cut_rate else "")
        lines.append(
            f"- Planner at {TARGET_INSTANCES / 1e6:,.0f} million rows, from the {largest.rows:,}-row "
            f"measurement scaled linearly (estimate): {cutting}a re-plan of an unchanged tree "
            f"{_hours(largest.replan_seconds * factor)}. Its memory stayed at "
            f"{largest.cut_max_rss_kib / 1024:,.0f} MiB at {largest.rows:,} rows (measured).")
    return lines


def _paper_machines(results: BenchResults) -> list[str]:
    run = _per_machine_run(results)
    if run is None or run.cpu_per_image is None:
        return []
    cores = int(results.machine.get("cores", "1"))
    per_machine = cores / run.cpu_per_image
    mean_bytes = run.bytes / run.instances

    lines = [f"- Throughput: {run_label(run)} used {run.cpu_per_image:.4f} CPU seconds per "
             f"file (measured). A worker machine of {cores} cores that does nothing else then sends at "
             f"most {per_machine:,.0f} files/s (estimate); this run, which shared its {cores} cores with "
             f"the receiver and the database, reached {run.images_per_second or 0:,.0f} files/s (measured)."]

    rows = []
    for machines in MACHINE_COUNTS:
        rate = machines * per_machine
        rows.append([str(machines), f"{rate:,.0f}", _hours(TARGET_INSTANCES / rate),
                     f"{rate * mean_bytes / GIGABIT_BYTES_PER_SECOND:,.1f}"])
    lines += ["", *markdown_table(("worker machines", "files/s (estimate)",
                                   f"time for {TARGET_INSTANCES / 1e6:,.0f} million files",
                                   "Gbit/s into the destination"), rows), ""]

    network = GIGABIT_BYTES_PER_SECOND / mean_bytes
    anchor = results.anchor(run.receiver)
    anchor_note = ""
    if anchor is not None and anchor.images_per_second:
        anchor_note = (f" On this machine storescu reached {anchor.images_per_second:,.0f} files/s into "
                       f"{anchor.receiver} (measured), a floor for what that receiver takes, not its limit.")
    lines.append(
        f"  The rate grows with the machines until the destination is the limit: its ingest rate, "
        f"which no run here measures, and its link, where 1 Gbit/s carries about {network:,.0f} files/s "
        f"of {mean_bytes / 1e3:.0f} kB (estimate).{anchor_note} The state database commits one outcome "
        "per file, so it must take the same number of commits per second.")
    return lines


def _scale_on_paper(results: BenchResults) -> list[str]:
    lines = _paper_state(results) + _paper_planner(results) + _paper_machines(results)
    if not lines:
        return []
    return ["### Scale on paper", "",
            "Measured per-file and per-row costs of this run, extrapolated to the design's "
            f"{TARGET_INSTANCES / 1e6:,.0f} million files. Only the numbers marked measured were measured.",
            "", *lines, ""]


def _profile(results: BenchResults) -> list[str]:
    profile = results.profile
    rows = profile_rows(results)
    if profile is None or not rows:
        return []
    return ["### Where migrator start spends its CPU", "",
            *markdown_table(PROFILE_COLUMNS, rows), "",
            f"`migrator start` (embedded, pynetdicom) sent the {profile.files:,} files of {profile.root} to "
            f"the first receiver under `py-spy record --subprocesses --nonblocking --rate {SAMPLE_RATE}`, "
            f"which took {profile.samples:,} samples of the running threads of every migrator process. "
            "Each sample counts for the innermost frame that names a step. The share after start-up "
            "leaves out the interpreter's start and imports, which a long migration pays once per process.",
            ""]


def markdown_section(results: BenchResults) -> str:
    lines = (_header(results) + _throughput(results) + _indexing(results) + _profile(results)
             + _scale(results) + _state_size(results) + _scale_on_paper(results))
    return "\n".join(lines).rstrip() + "\n"


def append_section(path: Path, section: str) -> None:
    """Append ``section`` to ``path`` after a blank line, creating the file with a title if needed."""
    if not path.exists():
        path.write_text("# Benchmarks\n", encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    if text.endswith("\n\n"):
        separator = ""
    elif text.endswith("\n"):
        separator = "\n"
    else:
        separator = "\n\n"
    with path.open("a", encoding="utf-8") as stream:
        stream.write(separator + section)
