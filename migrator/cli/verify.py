"""``migrator verify``: compare what each destination stores with the audit."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, load, out
from migrator.config import SINBIN, DestinationConfig, Settings
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.verify import (
    CommitListener,
    CommitTracker,
    DestinationSummary,
    ReportWriter,
    Target,
    VerifyOptions,
    group_targets,
    read_recheck,
    verify_destination,
)

#: Exit statuses besides 0 (every study verified).
EXIT_DIFFERENCES = 1
EXIT_USAGE = 2
EXIT_NOT_VERIFIED = 3


@app.command("verify")
def verify_command(
    config: ConfigOption = DEFAULT_CONFIG,
    destination: Annotated[list[str] | None, typer.Option(
        "--destination", "-d",
        help="Verify this destination; repeat for more. Default: every destination except the sin bin.")]
    = None,
    sinbin: Annotated[bool, typer.Option("--sinbin", help="Verify the sin bin archive too.")] = False,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="CSV report to write; an existing file is replaced.")]
    = Path("verify-report.csv"),
    chunk_size: Annotated[int, typer.Option(
        min=1, max=1000, help="Study Instance UIDs per STUDY level C-FIND, and studies per Storage "
                              "Commitment request.")] = 50,
    max_results: Annotated[int | None, typer.Option(
        min=1, help="The destinations' limit on matches per C-FIND: a query that returns this many "
                    "matches is split. Overrides verify_max_results of each destination.")] = None,
    recheck: Annotated[Path | None, typer.Option(
        help="Check only the studies that this earlier report did not verify (every study of a "
             "destination whose earlier run did not finish).")] = None,
    commit: Annotated[bool, typer.Option(
        "--commit", help="Also request Storage Commitment for every instance the audit records "
                         "as delivered.")] = False,
    commit_listen: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="With --commit, receive the N-EVENT-REPORTs that a destination sends "
                                  "on an association of its own at this address.")] = None,
    commit_timeout: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for Storage Commitment reports after the last request.")] = 60.0,
) -> None:
    """Query each destination with C-FIND and list every difference with the audit.

    Exits 0 when every study is verified, 1 when the report lists a
    difference, and 2 on an invalid option or configuration. Exits 3 when
    the verification could not run to the end because a destination, the
    state database or the report file could not be used.
    """
    settings = load(config)
    targets = _targets(settings, destination, sinbin)
    listen = _listen_address(commit_listen) if commit_listen else None
    if listen and not commit:
        console.print("[red]error:[/red] --commit-listen needs --commit", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    try:
        only = read_recheck(recheck) if recheck else None
    except MigratorError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    options = VerifyOptions(chunk_size=chunk_size, max_results=max_results, only=only, commit=commit,
                            commit_timeout=commit_timeout, commit_listening=listen is not None)
    tracker = CommitTracker() if commit else None
    summaries: list[DestinationSummary] = []
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with output.open("w", newline="", encoding="utf-8") as file, contextlib.ExitStack() as stack:
            if listen and tracker is not None:
                peers = sorted({_destination_config(settings, name).ae_title
                                for target in targets for name in target.members})
                stack.enter_context(CommitListener(settings.run.ae_title, listen[0], listen[1], peers, tracker))
            writer = ReportWriter(file)
            for target in targets:
                with sessions() as session:
                    summaries.append(verify_destination(session, settings.run.ae_title, target, options,
                                                        writer, tracker))
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot write the report to {output}: {exc.strerror or exc}",
                      highlight=False)
        raise typer.Exit(EXIT_NOT_VERIFIED) from None
    except MigratorError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_NOT_VERIFIED) from None
    except SQLAlchemyError as exc:
        console.print(f"[red]error:[/red] reading the state database failed: {exc}", highlight=False)
        raise typer.Exit(EXIT_NOT_VERIFIED) from None
    _print_summary(summaries, output)
    if any(summary.error for summary in summaries):
        raise typer.Exit(EXIT_NOT_VERIFIED)
    if any(summary.has_differences for summary in summaries):
        raise typer.Exit(EXIT_DIFFERENCES)


def _destination_config(settings: Settings, name: str) -> DestinationConfig:
    return settings.sinbin if name == SINBIN else settings.destinations[name]


def _targets(settings: Settings, names: list[str] | None, sinbin: bool) -> list[Target]:
    """Return what to verify: the chosen destinations, grouped by ``verify_archive``.

    Naming one destination of a group verifies the whole group, because
    its archive also stores what the others delivered.
    """
    known = {**settings.destinations, SINBIN: settings.sinbin}
    if names:
        unknown = [name for name in names if name not in known]
        if unknown:
            console.print(f"[red]error:[/red] unknown destination {', '.join(unknown)}; expected one of "
                          f"{', '.join(known)}", highlight=False)
            raise typer.Exit(EXIT_USAGE)
    chosen = set(names) if names else set(settings.destinations)
    if sinbin:
        chosen.add(SINBIN)
    return [target for target in group_targets(known) if chosen & set(target.members)]


def _listen_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        console.print(f"[red]error:[/red] --commit-listen {value!r} is invalid; expected HOST:PORT, "
                      "for example 0.0.0.0:11113", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    return host, int(port)


def _print_summary(summaries: list[DestinationSummary], output: Path) -> None:
    table = Table("destination", "studies", "verified", "with differences", "query failed",
                  "expected", "found", "missing", "unexpected", "C-FIND requests", "seconds")
    for s in summaries:
        table.add_row(s.name, f"{s.studies:,}", f"{s.verified:,}", f"{s.with_differences:,}",
                      f"{s.query_failed:,}", f"{s.expected:,}", f"{s.found:,}", f"{s.missing:,}",
                      f"{s.unexpected:,}", f"{s.requests:,}", f"{s.seconds:.1f}")
    out.print(table)
    for s in summaries:
        if s.not_committed or s.commit_unconfirmed:
            out.print(f"{s.name}: {s.not_committed:,} instances not committed, "
                      f"{s.commit_unconfirmed:,} studies without a Storage Commitment report",
                      highlight=False)
        for note in s.notes:
            out.print(f"{s.name}: {note}", highlight=False)
        if s.commit_error:
            console.print(f"[red]error:[/red] {s.commit_error}", highlight=False)
        if s.error:
            console.print(f"[red]error:[/red] {s.name} was not verified to the end: {s.error}",
                          highlight=False)
    verdict = ("every study verified" if not any(s.has_differences or s.error for s in summaries)
               else "differences found")
    out.print(f"{verdict}; report written to {output}", highlight=False)
