"""The migrator.toml of a generated archive, ready for ``migrator plan`` and ``migrator start``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from loadtest.archive.legacy_db import legacy_path_prefix
from migrator.config import Settings, load_settings
from migrator.demo.archive import RECONCILIATION_QUERY

CONFIG_NAME = "migrator.toml"


@dataclass(frozen=True)
class Endpoint:
    """A DICOM destination: host, port and called AE title."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``HOST:PORT:AET``; the host may be an IPv6 address with colons.

        Raises
        ------
        ValueError
            If a part is missing, the port is not 1 to 65535, or the AE title
            is empty or longer than 16 characters.
        """
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"invalid destination {text!r}: expected HOST:PORT:AET, "
                             "for example 127.0.0.1:11112:NEWPACS")
        host, port_text, ae_title = parts
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"invalid port {port_text!r} in {text!r}: expected 1 to 65535")
        if not ae_title.strip() or len(ae_title) > 16:
            raise ValueError(f"invalid AE title {ae_title!r} in {text!r}: expected 1 to 16 characters")
        return cls(host, int(port_text), ae_title)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.ae_title}"


#: Placeholders on 127.0.0.1 for the destinations that no option names.
DEFAULT_ENDPOINTS = {
    "main": Endpoint("127.0.0.1", 11112, "NEWPACS"),
    "nonpixel": Endpoint("127.0.0.1", 11113, "NEWPACS_NP"),
    "sinbin": Endpoint("127.0.0.1", 11114, "SINBIN"),
}


@dataclass(frozen=True)
class RunSettings:
    """The parts of migrator.toml that do not follow from the archive."""

    #: SQLAlchemy URL of the state database; None for state.sqlite3 in the output folder.
    state_url: str | None = None
    state_password_env: str | None = None
    legacy_password_env: str | None = None
    #: "main", "nonpixel" and "sinbin" -> destination.
    endpoints: dict[str, Endpoint] = field(default_factory=lambda: dict(DEFAULT_ENDPOINTS))
    #: Calling AE title of every association.
    calling_ae_title: str = "MIGRATOR"
    #: Worker processes of the embedded mode; None keeps the migrator's default (one per CPU).
    processes: int | None = None


def reconciliation_query(legacy_url: str) -> str:
    """Return the demo's reconciliation query, with its column aliases quoted except on SQLite.

    PostgreSQL folds unquoted names to lower case, so ``AS SOPInstanceUID``
    would return a column "sopinstanceuid", which is no DICOM keyword. Double
    quotes keep the case on PostgreSQL and on SQL Server alike. SQLite keeps
    the case anyway and gets the demo's query unchanged.
    """
    if make_url(legacy_url).get_backend_name() == "sqlite":
        return RECONCILIATION_QUERY
    # Column aliases are DICOM keywords or FilePath; the table aliases are lower case.
    return re.sub(r"\bAS ([A-Z][A-Za-z]*)\b", r'AS "\1"', RECONCILIATION_QUERY)


def write_migrator_config(folder: Path, roots: dict[str, Path], legacy_url: str,
                          run: RunSettings) -> Settings:
    """Write ``folder/migrator.toml`` and return it as loaded and validated by the migrator.

    Raises
    ------
    migrator.errors.ConfigError
        If the migrator rejects the file, for example a URL with a password.
    """
    quote = json.dumps  # a JSON string is a valid TOML basic string
    state_url = run.state_url or f"sqlite:///{folder / 'state.sqlite3'}"
    lines = ["# Written by 'python -m loadtest generate'.", "",
             "[state]", f"url = {quote(state_url)}"]
    if run.state_password_env:
        lines.append(f"password_env = {quote(run.state_password_env)}")
    lines += ["", "[legacy]", f"url = {quote(legacy_url)}"]
    if run.legacy_password_env:
        lines.append(f"password_env = {quote(run.legacy_password_env)}")
    lines += [f"query = {quote(reconciliation_query(legacy_url))}", 'path_column = "FilePath"', "",
              "[run]", f"ae_title = {quote(run.calling_ae_title)}"]
    if run.processes is not None:
        lines.append(f"processes = {run.processes}")
    lines.append("")
    for name, path in roots.items():
        lines += ["[[roots]]", f"name = {quote(name)}", f"path = {quote(str(path))}",
                  f"legacy_path_prefix = {quote(legacy_path_prefix(name))}", ""]
    for name, endpoint in run.endpoints.items():
        lines += ["[sinbin]" if name == "sinbin" else f"[destinations.{name}]",
                  f"ae_title = {quote(endpoint.ae_title)}", f"host = {quote(endpoint.host)}",
                  f"port = {endpoint.port}", ""]
    path = folder / CONFIG_NAME
    path.write_text("\n".join(lines), encoding="utf-8")
    return load_settings(path)
