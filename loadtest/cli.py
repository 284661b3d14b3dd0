"""``python -m loadtest``: the command line of the load-test tools."""

from __future__ import annotations

import logging
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

from loadtest.archive.config import DEFAULT_ENDPOINTS, Endpoint, RunSettings
from loadtest.archive.generate import GeneratedArchive, generate_archive
from loadtest.archive.layout import ArchiveSpec
from migrator.errors import MigratorError

app = typer.Typer(help="Load-test tools for pacs-migrator.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
#: Progress and errors go to stderr, the summary to stdout.
console = Console(stderr=True)
out = Console()

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


def main() -> None:
    app()
