"""``migrator trace``: everything that happened to one file."""

from __future__ import annotations

from typing import Annotated

import typer

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, load
from migrator.cli import out as stdout
from migrator.state.db import open_state
from migrator.state.models import Outcome
from migrator.trace import Trace, find_traces


@app.command("trace")
def trace_command(
    key: Annotated[str, typer.Argument(help="SOP Instance UID, path relative to a root, or absolute path.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Show where a file was found, what reconciliation changed, where it went and when."""
    settings = load(config)
    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    with sessions() as session:
        traces = find_traces(session, key)
        if not traces:
            console.print(f"no indexed file matches {key}")
            raise typer.Exit(1)
        for trace in traces:
            print_trace(trace)


def print_trace(trace: Trace) -> None:
    i = trace.instance
    out = stdout.print
    out(f"[bold]{trace.root.name}/{i.rel_path}[/bold] (instance {i.id})", highlight=False)
    out(f"  found      {trace.root.path}/{i.rel_path}, {i.size} bytes, indexed {i.indexed_at:%Y-%m-%d %H:%M:%S}",
        highlight=False)
    if i.parse_error:
        out(f"  unreadable {i.parse_error}", highlight=False)
    else:
        out(f"  SOP        {i.sop_class_uid} / {i.sop_instance_uid}", highlight=False)
        out(f"  study      {i.study_uid}, series {i.series_uid}, modality {i.modality}", highlight=False)
        out(f"  stored as  {i.transfer_syntax}, pixel data: {'yes' if i.has_pixel_data else 'no'}",
            highlight=False)
    if trace.batch:
        retries = f", {trace.batch.retries} automatic retries" if trace.batch.retries else ""
        out(f"  batch      {trace.batch.id} ({trace.batch.mode}, #{trace.batch.seq} of its root, "
            f"{trace.batch.status}{retries})", highlight=False)
        if trace.batch.failure_reason:
            out(f"      failed: {trace.batch.failure_reason}", highlight=False)
    for entry in trace.audit:
        when = f"{entry.finished_at:%Y-%m-%d %H:%M:%S}"
        if entry.destination is None:
            out(f"  {when} {entry.outcome}, not sent (rule: {entry.route_rule or '-'}) on host "
                f"{entry.host}", highlight=False)
        else:
            if entry.outcome == Outcome.DRY_RUN.value:
                status = "not sent (dry run)"
            elif entry.dimse_status is None:
                status = "none: not sent, or no response"
            else:
                status = f"0x{entry.dimse_status:04X}"
            out(f"  {when} {entry.outcome} to {entry.destination} (rule: {entry.route_rule or '-'}, "
                f"reconciliation: {entry.reconciliation or '-'}, DIMSE status: {status}) on host "
                f"{entry.host}", highlight=False)
        if entry.reason:
            kind = "reason (transient)" if entry.transient else "reason"
            out(f"      {kind}: {entry.reason}", highlight=False)
        for change in entry.changes or []:
            out(f"      changed {change['keyword']}: {change['old']!r} -> {change['new']!r}", highlight=False)
    for item in trace.sinbin:
        released = f"released to {item.released_to} at {item.released_at:%Y-%m-%d %H:%M:%S}" \
            if item.released_at else "not released"
        where = "in the sin bin archive" if item.archived else "left on disk"
        out(f"  sin bin item {item.id}: {item.reason} ({where}, {released})", highlight=False)
    out(f"  outcome    {i.outcome or 'pending'}", highlight=False)
