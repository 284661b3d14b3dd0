"""``migrator config check``: validate the file and test every connection."""

from __future__ import annotations

import typer
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, load, out
from migrator.dicom.send import echo
from migrator.errors import LegacyDatabaseError, MigratorError
from migrator.reconcile.legacy import LegacyDatabase
from migrator.route import load_exclusion_list
from migrator.state.db import open_state

config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate the configuration and test the databases, roots and destinations (C-ECHO)."""
    settings = load(config)
    out.print(f"{config}: valid")
    problems = 0

    def report(what: str, action: object) -> None:
        nonlocal problems
        try:
            if callable(action):
                action()
            out.print(f"  [green]ok[/green]     {what}")
        except (MigratorError, OSError) as exc:
            problems += 1
            out.print(f"  [red]failed[/red] {what}: {exc}", highlight=False)

    report(f"state database {settings.state.url}",
           lambda: open_state(settings.state.sqlalchemy_url(settings.base_dir)))

    def legacy_check() -> None:
        legacy = LegacyDatabase(settings.legacy, settings.base_dir)
        try:
            with legacy.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            url = legacy.engine.url.render_as_string(hide_password=True)
            reason = getattr(exc, "orig", None) or exc
            raise LegacyDatabaseError(f"cannot connect to {url}: {reason}; check legacy.url and that "
                                      "the database server accepts connections from this host") from None
        # Two UIDs, because "IN (:uids)" works with one and fails with more.
        legacy.fetch(["1.2.3.4.5.6.7.8.9", "1.2.3.4.5.6.7.8.10"])

    report("legacy database and reconciliation query", legacy_check)
    for root in settings.roots:
        path = settings.resolve(root.path)

        def root_check(path=path) -> None:  # type: ignore[no-untyped-def]
            if not path.is_dir():
                raise OSError(f"{path} is not a readable folder; is the share mounted?")

        report(f"storage root {root.name} ({path})", root_check)
    if settings.routing.exclusion_list is None:
        out.print("  [dim]none[/dim]   exclusion list: not configured")
    else:
        report(f"exclusion list ({settings.routing.exclusion_list})", lambda: load_exclusion_list(settings))
    targets = dict(settings.destinations, sinbin=settings.sinbin)
    for name, destination in targets.items():
        report(f"C-ECHO {name} ({destination.ae_title}@{destination.host}:{destination.port})",
               lambda name=name, destination=destination: echo(settings.run.ae_title, name, destination))
    if problems:
        out.print(f"{problems} check(s) failed")
        raise typer.Exit(1)
