"""``migrator sinbin list`` and ``migrator sinbin release``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.context import RunContext
from migrator.errors import MigratorError
from migrator.sinbin import list_items, release

sinbin_app = typer.Typer(help="Review and release what the migration held back.", no_args_is_help=True)
app.add_typer(sinbin_app, name="sinbin")

Reason = Annotated[str | None, typer.Option(help="Only items whose reason starts with this, e.g. 'orphan'.")]
Root = Annotated[str | None, typer.Option(help="Only items from this storage root.")]
Study = Annotated[str | None, typer.Option(help="Only items of this Study Instance UID.")]


@sinbin_app.command("list")
def list_command(config: ConfigOption = DEFAULT_CONFIG, reason: Reason = None, root: Root = None,
                 study: Study = None,
                 released: Annotated[bool, typer.Option(help="Include released items.")] = False) -> None:
    """List sin bin items with their reason; unreadable files show the parse error."""
    settings = load(config)
    context = RunContext.open(settings)
    with context.sessions() as session:
        rows = list_items(session, reason, root, study, include_released=released)
    table = Table(title=f"Sin bin: {len(rows)} item(s)",
                  caption="where: 'archive' = a copy is in the sin bin archive; "
                          "'on disk' = unreadable, left where it was found")
    for column in ("item", "root", "path", "reason", "where", "released to"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.item.id), row.root, row.instance.rel_path, row.item.reason,
                      "archive" if row.item.archived else "on disk", row.item.released_to or "")
    out.print(table)
    if not rows and reason:
        with context.sessions() as session:
            known = sorted({item.item.reason.split(":", 1)[0] for item in list_items(session)})
        console.print(f"no item has a reason starting with {reason!r}; reasons in the sin bin: "
                      f"{', '.join(known) or 'none'}", highlight=False)


@sinbin_app.command("release")
def release_command(
    to: Annotated[str, typer.Option("--to", help="Destination name to send the items to.")],
    item: Annotated[list[int] | None, typer.Option("--item", help="Item id; repeat for several.")] = None,
    config: ConfigOption = DEFAULT_CONFIG, reason: Reason = None, root: Root = None, study: Study = None,
    dry_run: Annotated[bool, typer.Option(help="List the items that would be released; send nothing.")]
    = False,
) -> None:
    """Send reviewed items to a destination through the normal path (corrected and audited)."""
    if not (item or reason or root or study):
        raise fail(ValueError("name the items to release with --item, --reason, --root or --study"))
    settings = load(config)
    try:
        context = RunContext.open(settings)
        with context.sessions() as session:
            rows = list_items(session, reason, root, study, ids=item)
        if dry_run:
            for row in rows:
                out.print(f"item {row.item.id}: would send {row.root}/{row.instance.rel_path} to {to} "
                          f"({row.item.reason})", highlight=False)
            out.print(f"{len(rows)} item(s) match; nothing was sent")
            return
        results = release(context, rows, to)
    except MigratorError as exc:
        raise fail(exc) from None
    failed = 0
    for item_id, result in sorted(results.items()):
        out.print(f"item {item_id}: {result}", highlight=False)
        failed += result not in ("sent", "sent_with_warning")
    if not results:
        console.print("no unreleased sin bin item matches; see 'migrator sinbin list'")
        raise typer.Exit(1)
    if failed:
        raise typer.Exit(1)
