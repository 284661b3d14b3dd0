"""``python -m loadtest``: the command line of the load-test tools."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from loadtest.archive.config import DEFAULT_ENDPOINTS, Endpoint, RunSettings
from loadtest.archive.generate import GeneratedArchive, generate_archive
from loadtest.archive.layout import ArchiveSpec
from loadtest.badfiles import Expected, add_legacy_rows, write_bad_files
from loadtest.bench.receivers import RECEIVERS, ReceiverError
from loadtest.bench.record import append_section, markdown_section
from loadtest.bench.report import console_tables, problem_lines
from loadtest.bench.results import BenchResults, RunResult
from loadtest.bench.run import NAMES, BenchOptions, run_bench
from loadtest.bench.workers import WorkerError
from migrator.config import load_settings
from migrator.errors import MigratorError

app = typer.Typer(help="Load-test tools for pacs-migrator.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
#: Progress and errors go to stderr, the summary to stdout.
console = Console(stderr=True)
out = Console()
#: The benchmark's tables; redirected output keeps whole rows.
wide_out = Console() if sys.stdout.isatty() else Console(width=250)

_DEFAULT = ArchiveSpec()


def _endpoint(name: str, value: str | None) -> Endpoint:
    if value is None:
        return DEFAULT_ENDPOINTS[name]
    try:
        return Endpoint.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{name}") from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False
          ) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    # pylibjpeg-openjpeg logs every encoded tile at INFO.
    logging.getLogger("openjpeg").setLevel(logging.WARNING)


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="New or empty folder for the archive, its legacy database, manifest and "
                      "migrator.toml.")],
    instances: Annotated[int, typer.Option(
        help="SOP instances to generate. Each duplicate adds a second file.")] = _DEFAULT.instances,
    roots: Annotated[int, typer.Option(help="Storage roots, named share01, share02, ...")] = _DEFAULT.roots,
    seed: Annotated[int, typer.Option(help="The same seed and options give the same archive.")
                    ] = _DEFAULT.seed,
    nonpixel_rate: Annotated[float, typer.Option(
        help="Share of instances that are Basic Text SR or Key Object Selection documents.")
    ] = _DEFAULT.nonpixel_rate,
    mismatch_rate: Annotated[float, typer.Option(
        help="Share of instances whose header has an outdated patient name, ID or birth date.")
    ] = _DEFAULT.mismatch_rate,
    orphan_rate: Annotated[float, typer.Option(
        help="Share of instances whose legacy database row is deleted.")] = _DEFAULT.orphan_rate,
    duplicate_rate: Annotated[float, typer.Option(
        help="Share of instances stored in two files, of which the database references one.")
    ] = _DEFAULT.duplicate_rate,
    merged_rate: Annotated[float, typer.Option(
        help="Share of studies that the legacy database merged into another study.")
    ] = _DEFAULT.merged_rate,
    instances_per_study: Annotated[int, typer.Option(
        help="Mean instances per study. Sizes vary from 0.4 to 1.6 times this.")
    ] = _DEFAULT.instances_per_study,
    folders_per_day: Annotated[int, typer.Option(
        help="Folders per storage day that each root stripes its files over.")
    ] = _DEFAULT.folders_per_day,
    studies_per_day: Annotated[int, typer.Option(
        help="Studies a root stores per storage day.")] = _DEFAULT.studies_per_day,
    main: Annotated[str | None, typer.Option(
        help="Main destination as HOST:PORT:AET, or 127.0.0.1:11112:NEWPACS if not given.")] = None,
    nonpixel: Annotated[str | None, typer.Option(
        help="Non-pixel destination as HOST:PORT:AET, or 127.0.0.1:11113:NEWPACS_NP if not given.")
    ] = None,
    sinbin: Annotated[str | None, typer.Option(
        help="Sin bin archive as HOST:PORT:AET, or 127.0.0.1:11114:SINBIN if not given.")] = None,
    calling_aet: Annotated[str, typer.Option(help="The migrator's own (calling) AE title.")] = "MIGRATOR",
    processes: Annotated[int | None, typer.Option(
        help="Worker processes of the embedded mode, or the migrator's default (one per CPU) if not "
             "given.")] = None,
    state_url: Annotated[str | None, typer.Option(
        help="State database URL without a password, for example "
             "postgresql+psycopg://migrator@127.0.0.1/migrator, or state.sqlite3 in --out if not given.")
    ] = None,
    state_password_env: Annotated[str | None, typer.Option(
        help="Environment variable that contains the state database's password.")] = None,
    legacy_url: Annotated[str | None, typer.Option(
        help="URL of an empty database for the legacy tables, without a password, or "
             "legacy-pacs.sqlite3 in --out if not given.")] = None,
    legacy_password_env: Annotated[str | None, typer.Option(
        help="Environment variable that contains the legacy database's password.")] = None,
) -> None:
    """Generate a synthetic legacy archive with its legacy database, manifest and migrator.toml."""
    spec = ArchiveSpec(
        instances=instances, roots=roots, seed=seed, nonpixel_rate=nonpixel_rate,
        mismatch_rate=mismatch_rate, orphan_rate=orphan_rate, duplicate_rate=duplicate_rate,
        merged_rate=merged_rate, instances_per_study=instances_per_study,
        folders_per_day=folders_per_day, studies_per_day=studies_per_day,
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run = RunSettings(
        state_url=state_url, state_password_env=state_password_env,
        legacy_password_env=legacy_password_env,
        endpoints={"main": _endpoint("main", main), "nonpixel": _endpoint("nonpixel", nonpixel),
                   "sinbin": _endpoint("sinbin", sinbin)},
        calling_ae_title=calling_aet, processes=processes,
    )
    try:
        with Progress(TextColumn("writing files"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("files", total=spec.files)
            archive = generate_archive(out_dir, spec, run, legacy_url,
                                       progress=lambda count: progress.advance(task, count))
    except (ValueError, FileExistsError, FileNotFoundError, MigratorError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _print_summary(archive)


def _print_summary(archive: GeneratedArchive) -> None:
    summary = archive.summary
    table = Table(title="Expected outcomes")
    for column in ("destination", "outcome", "reason", "files"):
        table.add_column(column, justify="right" if column == "files" else "left")
    for row in summary["expected_outcomes"]:
        table.add_row(row["destination"], row["outcome"], row["reason"] or "", f"{row['files']:,}")
    out.print(table)
    scenarios = ", ".join(f"{name} {count}" for name, count in summary["scenario_instances"].items())
    out.print(f"Instances per scenario: {scenarios}; merged studies: {len(summary['merged_studies'])} "
              f"of {summary['studies']}")
    megabytes = summary["bytes"] / 1e6
    out.print(f"Wrote {summary['files']:,} files ({megabytes / 1e3:.2f} GB) on {len(archive.roots)} roots "
              f"in {archive.seconds:.1f} s: {archive.files_per_second:,.0f} files/s, "
              f"{megabytes / archive.seconds:,.0f} MB/s")
    config = archive.folder / "migrator.toml"
    out.print(f"Next: migrator config check --config {config}\n"
              f"      migrator plan --config {config}\n"
              f"      migrator start --config {config}")


@app.command()
def badfiles(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="New or empty folder for the bad files; put it inside a storage root to migrate "
                      "them.")],
    outside: Annotated[Path | None, typer.Option(
        help="Folder outside every storage root for the targets of the symbolic links that leave the "
             "root. Default: OUT.outside, where OUT is the name of --out, next to the --config file "
             "or else next to --out.")] = None,
    config: Annotated[Path | None, typer.Option(
        help="migrator.toml of the archive: adds the files' rows to its legacy database, so that they "
             "are sent and not held back as orphans. --out must be inside one of its roots.")] = None,
    frames: Annotated[int, typer.Option(
        min=1, help="Frames of 512 KiB in the uncompressed multi-frame image.")] = 16,
    seed: Annotated[int, typer.Option(help="The same seed gives the same UIDs.")] = 1,
    manifest: Annotated[Path | None, typer.Option(
        help="Write every file's kind, path, UIDs and expected outcome to this JSON file, which must "
             "not be inside a storage root.")] = None,
) -> None:
    """Write one small file of each bad or odd kind, with the outcome the migrator must record."""
    out_dir = out_dir.absolute()
    if outside is None:
        outside = (config.absolute().parent if config else out_dir.parent) / f"{out_dir.name}.outside"
    outside = outside.absolute()
    target = _legacy_target(config, out_dir, outside) if config is not None else None

    try:
        specs = write_bad_files(out_dir, outside, seed=seed, frames=frames)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if target is not None:
        url, folder, prefix = target
        try:
            rows = add_legacy_rows(url, specs, folder, prefix)
        except (FileExistsError, SQLAlchemyError) as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        out.print(f"Added {rows} instance rows to the legacy database under {prefix}{folder}")

    if manifest is not None:
        manifest.write_text(json.dumps([spec.as_json() for spec in specs], indent=2) + "\n",
                            encoding="utf-8")

    table = Table(title=f"Bad files in {out_dir}")
    for column in ("path", "kind", "expected", "as root"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.rel_path, spec.kind, _expected_text(spec.expected),
                      _expected_text(spec.expected_as_root) if spec.expected_as_root else "")
    wide_out.print(table)
    if target is None:
        out.print("Without --config the legacy database has no rows for them: every readable file "
                  "goes to the sin bin as an orphan.")


def _expected_text(expected: Expected) -> str:
    return " ".join(part for part in (expected.outcome, expected.destination, expected.reason) if part)


def _legacy_target(config: Path, out_dir: Path, outside: Path) -> tuple[URL, str, str]:
    """Return the legacy database URL, --out relative to its root, and the root's legacy path prefix."""
    try:
        settings = load_settings(config)
        url = settings.legacy.sqlalchemy_url(settings.base_dir)
    except MigratorError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    found = None
    for root in settings.roots:
        path = settings.resolve(root.path).resolve()
        if outside.resolve().is_relative_to(path):
            raise typer.BadParameter(f"{outside} is inside the storage root {root.name}; choose a folder "
                                     "outside every root", param_hint="--outside")
        if out_dir.resolve().is_relative_to(path):
            # Without a prefix, the migrator takes the root's own path as the legacy paths' prefix.
            found = (url, out_dir.resolve().relative_to(path).as_posix(), root.legacy_path_prefix or str(path))
    if found is None:
        raise typer.BadParameter(f"{out_dir} is in none of the storage roots of {config}",
                                 param_hint="--out")
    return found


#: The benchmark record at the repository root.
BENCHMARKS_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def _names(value: str, option: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("give at least one name", param_hint=option)
    return names


def _row_done(result: RunResult) -> None:
    if not result.available:
        state = f"not available: {result.note}"
    elif result.valid:
        state = f"{result.images_per_second or 0:,.0f} images/s in {result.seconds or 0:.1f} s"
    else:
        state = "invalid: " + "; ".join(result.problems)
    console.print(f"{result.label} to {result.receiver}: {state}", highlight=False)


@app.command()
def bench(
    instances: Annotated[int, typer.Option(help="SOP instances in the generated archive.")] = 20_000,
    work_dir: Annotated[Path | None, typer.Option(
        help="Folder for the archive, the receivers' storage, logs and bench-results.json; an archive "
             "generated there before with the same --instances is reused. Default: a new temporary "
             "folder.")] = None,
    keep: Annotated[bool, typer.Option(
        help="Keep the archive, the receivers' files and the logs instead of removing them at the end.")
    ] = False,
    receivers: Annotated[str, typer.Option(
        help=f"Comma-separated receivers, each run with every contender: {', '.join(RECEIVERS)}.")
    ] = "storescp,orthanc",
    only: Annotated[str, typer.Option(
        help=f"Comma-separated contenders and measurements to run: {', '.join(NAMES)}.")
    ] = ",".join(NAMES),
    append: Annotated[bool, typer.Option(
        help="Append the results as a section to BENCHMARKS.md (see --benchmarks-file).")] = False,
    benchmarks_file: Annotated[Path, typer.Option(
        help="The Markdown file that --append writes to.")] = BENCHMARKS_FILE,
    scale_rows: Annotated[str, typer.Option(
        help="Comma-separated synthetic index row counts for the planner-scale measurement.")
    ] = "100000,1000000",
    embedded_state: Annotated[str, typer.Option(
        help="State database of the embedded runs: sqlite or postgresql. The Celery run always uses "
             "PostgreSQL.")] = "sqlite",
    processes: Annotated[int | None, typer.Option(
        help="run.processes of the migrator, or one per CPU if not given.")] = None,
    celery_workers: Annotated[int, typer.Option(
        help="migrator worker processes of the Celery contender, each with one pool process.")] = 2,
    postgres_url: Annotated[str, typer.Option(
        help="PostgreSQL server URL of a user that may create databases; each run creates its own "
             "database there and drops it afterwards.")] = BenchOptions.postgres_url,
    redis_url: Annotated[str, typer.Option(help="Redis URL of the Celery broker.")] = BenchOptions.redis_url,
    results_file: Annotated[Path | None, typer.Option(
        "--results", help="Print (and with --append, append) the results of an earlier run from its "
                          "bench-results.json instead of running the benchmark.")] = None,
) -> None:
    """Measure storescu and the migrator's modes sending one generated archive to one receiver."""
    if results_file is not None:
        try:
            earlier = BenchResults.from_json(json.loads(results_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise typer.BadParameter(f"cannot read {results_file}: {exc}", param_hint="--results") from None
        _report(earlier, append, benchmarks_file)
        return
    if embedded_state not in ("sqlite", "postgresql"):
        raise typer.BadParameter("expected sqlite or postgresql", param_hint="--embedded-state")
    try:
        rows = [int(value) for value in _names(scale_rows, "--scale-rows")]
    except ValueError:
        raise typer.BadParameter(f"expected whole numbers, not {scale_rows!r}",
                                 param_hint="--scale-rows") from None
    options = BenchOptions(
        instances=instances, work_dir=work_dir, keep=keep, receivers=_names(receivers, "--receivers"),
        only=_names(only, "--only"), scale_rows=rows, postgres_url=postgres_url, redis_url=redis_url,
        embedded_state="postgresql" if embedded_state == "postgresql" else "sqlite",
        celery_workers=celery_workers,
        command="python -m loadtest bench " + shlex.join(sys.argv[2:]))
    if processes is not None:
        options.processes = processes
    try:
        options.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        results = run_bench(options, on_result=_row_done)
    except (ValueError, OSError, ReceiverError, WorkerError, MigratorError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _report(results, append, benchmarks_file)
    if any(run.available and not run.valid for run in results.runs) or any(m.problems for m in results.scale):
        raise typer.Exit(1)


def _report(results: BenchResults, append: bool, benchmarks_file: Path) -> None:
    """Print the tables and, with ``append``, add the section to ``benchmarks_file``."""
    for table in console_tables(results):
        wide_out.print(table)
    for line in problem_lines(results):
        wide_out.print(line, highlight=False)
    if append:
        append_section(benchmarks_file, markdown_section(results))
        console.print(f"appended the results to {benchmarks_file}", highlight=False)


def main() -> None:
    app()
