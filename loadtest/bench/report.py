"""The benchmark's tables: printed to the terminal and appended to BENCHMARKS.md as Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from loadtest.bench.results import BenchResults, RunResult, ScaleMeasure

MIB = 1024


def _number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _check(run: RunResult) -> str:
    if not run.available:
        return "not available"
    return "valid" if run.valid else "invalid"


def _spread(run: RunResult) -> str:
    spread = run.spread
    if spread is None or not spread.studies:
        return "–"
    return f"{_seconds(spread.median)} / {_seconds(spread.p95)} / {_seconds(spread.max)}"


THROUGHPUT_COLUMNS = ("contender", "receiver", "state", "files", "start s", "images/h", "MB/s",
                      "CPU s/image", "receiver CPU s/image", "× storescu", "spread s (median / p95 / max)",
                      "load", "check")


def throughput_rows(results: BenchResults) -> list[list[str]]:
    rows = []
    for run in results.runs:
        rate = run.images_per_second
        receiver_cpu = (run.receiver_cpu_seconds / run.instances
                        if run.receiver_cpu_seconds is not None and run.instances else None)
        ratio = results.ratio(run)
        rows.append([
            run.label, run.receiver, run.state or "–",
            _number(run.instances) if run.available else "–",
            _seconds(run.seconds) if run.available else "–",
            _number(rate * 3600 if rate is not None else None),
            _number(run.bytes / 1e6 / run.seconds if run.available and run.seconds else None, 1),
            _number(run.cpu_per_image, 4), _number(receiver_cpu, 4),
            _number(ratio, 2), _spread(run),
            _number(run.load_average, 2), _check(run),
        ])
    return rows


INDEXING_COLUMNS = ("indexing", "state", "processes", "files", "plan s", "plan files per CPU-second",
                    "indexing s", "files/s", "files per CPU-second", "× dcmread per CPU-second",
                    "max RSS MiB")


def indexing_rows(results: BenchResults) -> list[list[str]]:
    rows = []
    baseline = results.baseline
    for plan in results.plans():
        rate = plan.index_files_per_cpu_second
        ratio = (rate / baseline.files_per_cpu_second
                 if rate is not None and baseline is not None and baseline.files_per_cpu_second else None)
        index_rate = plan.files / plan.index_seconds if plan.index_seconds else None
        rows.append([f"migrator plan ({plan.run})", plan.state, str(plan.processes), _number(plan.files),
                     _seconds(plan.seconds), _number(plan.files_per_cpu_second),
                     _seconds(plan.index_seconds), _number(index_rate), _number(rate),
                     _number(ratio, 2), _number(plan.max_rss_kib / MIB)])
    if baseline is not None:
        rows.append(["pydicom.dcmread(stop_before_pixels=True)", "–", "1", _number(baseline.files),
                     "–", "–", _seconds(baseline.seconds), _number(baseline.files_per_second),
                     _number(baseline.files_per_cpu_second), "1.00", "–"])
    return rows


SCALE_COLUMNS = ("index rows", "folders", "COPY s", "plan: walk + cut s", "CPU s", "max RSS MiB", "batches",
                 "re-plan unchanged s", "CPU s", "max RSS MiB", "cut rows/s", "check")


def cut_rows_per_second(measure: ScaleMeasure) -> float | None:
    """Estimate the cutting rate from the difference of the two plans; None if it is not positive."""
    difference = measure.cut_seconds - measure.replan_seconds
    return measure.rows / difference if difference > 0 else None


def scale_rows(results: BenchResults) -> list[list[str]]:
    return [[_number(m.rows), _number(m.folders), _seconds(m.insert_seconds), _seconds(m.cut_seconds),
             _seconds(m.cut_cpu_seconds), _number(m.cut_max_rss_kib / MIB), _number(m.batches),
             _seconds(m.replan_seconds), _seconds(m.replan_cpu_seconds), _number(m.replan_max_rss_kib / MIB),
             _number(cut_rows_per_second(m)), "valid" if not m.problems else "invalid"]
            for m in results.scale]


def state_size_run(results: BenchResults) -> RunResult | None:
    """Return the first run whose PostgreSQL tables were measured, a valid one if there is one.

    A run is invalid when, for example, a retried C-STORE was stored twice,
    which leaves its state database one audit row larger per retry.
    """
    measured = [run for run in results.runs if run.state_sizes is not None]
    return next((run for run in measured if run.valid), measured[0] if measured else None)


def state_size_rows(run: RunResult) -> list[list[str]]:
    assert run.state_sizes is not None and run.state_sizes_vacuumed is not None
    thousands = run.instances / 1000
    rows = []
    for table, size in run.state_sizes.items():
        compact = run.state_sizes_vacuumed.get(table, 0)
        rows.append([table, _number(size / 1e6, 2), _number(compact / 1e6, 2),
                     _number(size / 1e3 / thousands, 1), _number(compact / 1e3 / thousands, 1)])
    total, compact_total = sum(run.state_sizes.values()), sum(run.state_sizes_vacuumed.values())
    rows.append(["all tables", _number(total / 1e6, 2), _number(compact_total / 1e6, 2),
                 _number(total / 1e3 / thousands, 1), _number(compact_total / 1e3 / thousands, 1)])
    return rows


def run_label(run: RunResult) -> str:
    return f"{run.label} to {run.receiver}" + ("" if run.valid else " (a row marked invalid)")


PROFILE_COLUMNS = ("step of migrator start", "share of samples", "share after start-up")
#: The profile step that a long migration pays once per process, not per file.
START_UP_STEP = "interpreter start and imports"


def profile_rows(results: BenchResults) -> list[list[str]]:
    """Return each step's share of the profile's samples, and its share without the start-up."""
    profile = results.profile
    if profile is None or not profile.shares:
        return []
    steady = 1 - profile.shares.get(START_UP_STEP, 0.0)
    return [[step, f"{share:.1%}", "–" if step == START_UP_STEP or not steady else f"{share / steady:.1%}"]
            for step, share in profile.shares.items()]


STATE_SIZE_COLUMNS = ("table", "MB as left", "MB after VACUUM FULL", "kB per 1,000 files as left",
                      "kB per 1,000 files after VACUUM FULL")


def problem_lines(results: BenchResults) -> list[str]:
    """Return one line per reason that a row is invalid or not available, and per failed attempt."""
    lines = []
    for run in results.runs:
        if not run.available:
            lines.append(f"{run.label} to {run.receiver}: not available: {run.note}")
        for problem in run.problems:
            lines.append(f"{run.label} to {run.receiver}: {problem}")
        for reason, count in run.failed_attempts.items():
            lines.append(f"{run.label} to {run.receiver}: {count} failed attempt(s) before the final "
                         f"outcome: {reason}")
    for measure in results.scale:
        for problem in measure.problems:
            lines.append(f"planner at {measure.rows:,} rows: {problem}")
    if results.profile is not None:
        lines += [f"profile of migrator start: {problem}" for problem in results.profile.problems]
    return lines


def rich_table(title: str, columns: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _is_text(cells: Sequence[str]) -> bool:
    """Tell whether a column contains words rather than numbers, which Markdown then aligns left."""
    return any(cell[:1].isalpha() for cell in cells)


def markdown_table(columns: Sequence[str], rows: list[list[str]]) -> list[str]:
    alignments = ["---" if _is_text([row[index] for row in rows]) else "---:" for index in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(alignments) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def console_tables(results: BenchResults) -> list[Table]:
    tables = [rich_table("Throughput", THROUGHPUT_COLUMNS, throughput_rows(results))]
    if results.plans() or results.baseline is not None:
        tables.append(rich_table("Indexing", INDEXING_COLUMNS, indexing_rows(results)))
    if results.scale:
        tables.append(rich_table("Planner with synthetic index rows", SCALE_COLUMNS, scale_rows(results)))
    if profile_rows(results):
        tables.append(rich_table("Where migrator start spends its CPU", PROFILE_COLUMNS,
                                 profile_rows(results)))
    size_run = state_size_run(results)
    if size_run is not None:
        tables.append(rich_table(f"PostgreSQL state database after {run_label(size_run)}",
                                 STATE_SIZE_COLUMNS, state_size_rows(size_run)))
    return tables
