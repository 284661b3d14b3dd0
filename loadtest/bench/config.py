"""The migrator.toml of one benchmark run: the generated roots, every destination at one receiver."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtest.archive.config import CONFIG_NAME, reconciliation_query
from loadtest.archive.legacy_db import legacy_path_prefix

#: The calling AE title of the migrator; the receivers accept it.
CALLING_AE_TITLE = "MIGRATOR"


@dataclass(frozen=True)
class Broker:
    url: str
    queue_prefix: str


@dataclass(frozen=True)
class RunConfig:
    """The settings of migrator.toml that differ between benchmark runs."""

    state_url: str
    receiver_port: int
    receiver_ae_title: str
    processes: int
    #: The ``engine`` of every destination, or None to leave the migrator's default.
    engine: Literal["pynetdicom", "dcmsend"] | None = None
    broker: Broker | None = None


def write_run_config(folder: Path, roots: dict[str, Path], legacy_url: str, run: RunConfig) -> Path:
    """Write ``folder/migrator.toml`` and return its path.

    The main, non-pixel and sin bin destinations all name the one receiver,
    so every file of the archive is stored there, as storescu stores it.
    """
    quote = json.dumps  # a JSON string is a valid TOML basic string
    lines = ["# Written by 'python -m loadtest bench'.", "",
             "[state]", f"url = {quote(run.state_url)}", "",
             "[legacy]", f"url = {quote(legacy_url)}",
             f"query = {quote(reconciliation_query(legacy_url))}", 'path_column = "FilePath"', "",
             "[run]", f"ae_title = {quote(CALLING_AE_TITLE)}", f"processes = {run.processes}", ""]
    for name, path in roots.items():
        lines += ["[[roots]]", f"name = {quote(name)}", f"path = {quote(str(path))}",
                  f"legacy_path_prefix = {quote(legacy_path_prefix(name))}", ""]
    for section in ("[destinations.main]", "[destinations.nonpixel]", "[sinbin]"):
        lines += [section, f"ae_title = {quote(run.receiver_ae_title)}", 'host = "127.0.0.1"',
                  f"port = {run.receiver_port}"]
        if run.engine is not None:
            lines.append(f"engine = {quote(run.engine)}")
        lines.append("")
    if run.broker is not None:
        lines += ["[broker]", f"url = {quote(run.broker.url)}",
                  f"queue_prefix = {quote(run.broker.queue_prefix)}", ""]
    path = folder / CONFIG_NAME
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
