"""``migrator collisions``: the collisions that the last ``migrator plan`` found, file by file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.collisions.report import (
    collision_counts,
    iter_collision_rows,
    policy_of,
    write_csv,
)
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import CollisionKind

KINDS = [kind.value for kind in CollisionKind]


@app.command("collisions")
def collisions_command(
    config: ConfigOption = DEFAULT_CONFIG,
    kind: Annotated[str | None, typer.Option(
        help=f"Only collisions of this kind: {', '.join(KINDS)}.")] = None,
    csv_file: Annotated[Path | None, typer.Option(
        "--csv", help="Also write every file of every listed collision to this CSV file; an existing "
                      "file is replaced.")] = None,
) -> None:
    """List the files that share a SOP Instance UID or a Patient ID with a conflicting file, and the policy."""
    if kind is not None and kind not in KINDS:
        console.print(f"[red]error:[/red] --kind must be one of {', '.join(KINDS)}, not {kind!r}",
                      highlight=False)
        raise typer.Exit(2)
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            counts = collision_counts(session)
            table = Table(title="Collisions found by the last plan",
                          caption="a Patient ID is shown as its keyed hash; 'name 1' and 'name 2' are "
                                  "different patient names")
            for column in ("collision", "kind", "SOP Instance UID or Patient ID hash", "variant", "root", "path",
                           "study", "outcome", "note"):
                table.add_column(column, overflow="fold")
            for row in iter_collision_rows(session, kind):
                table.add_row(str(row.collision), row.kind, row.key, row.variant_label, row.root, row.path,
                              row.study_instance_uid or "", row.outcome or "pending", row.note or "")
            if csv_file is not None:
                written = write_csv(iter_collision_rows(session, kind), csv_file)
    except MigratorError as exc:
        raise fail(exc) from None
    except OSError as exc:
        raise fail(OSError(f"cannot write {csv_file}: {exc.strerror or exc}")) from None
    out.print(table)
    for name in KINDS:
        if kind is None or kind == name:
            collisions, files = counts[name]
            out.print(f"{name}: {collisions} collision(s), {files} file(s); policy: "
                      f"collisions.{name} = {policy_of(settings.collisions, name)}", highlight=False)
    if csv_file is not None:
        out.print(f"wrote {csv_file} ({written} file(s))", highlight=False)
