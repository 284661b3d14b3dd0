"""``migrator demo``: build a demo archive, migrate it to local SCPs, check every file.

The demo is a real migration on the embedded default: three storage SCPs on
127.0.0.1 (the main port, the non-pixel port and the sin bin), a legacy
SQLite database that disagrees with the headers, ``plan`` and ``start``.
It then compares what each SCP received with what the archive's builder
expects, file by file.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AllStoragePresentationContexts
from sqlalchemy import select

from migrator.config import Settings, load_settings
from migrator.demo.archive import DemoArchive, ExpectedOutcome, build_demo_archive
from migrator.demo.scp import StorageSCP
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import Instance, SinBinItem, StorageRoot
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import RootPlanSummary, plan

MARKER = ".migrator-demo"
CALLING_AE = "MIGRATOR"
SCP_TITLES = {"main": "NEWPACS", "nonpixel": "NEWPACS_NP", "sinbin": "SINBIN"}
DELIVERED_AS = {"main": "sent", "nonpixel": "sent", "sinbin": "sinbinned", "unreadable": "unreadable"}


@dataclass
class DemoResult:
    plan: list[RootPlanSummary]
    #: (expected destination, recorded outcome) -> count
    table: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def prepare_folder(folder: Path) -> None:
    """Empty ``folder`` if an earlier demo made it; refuse any other non-empty folder."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise MigratorError(f"{folder} is not empty and was not made by 'migrator demo'; "
                                "choose another folder with --dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by 'migrator demo'; deleted by the next demo run\n")


def write_config(folder: Path, archive: DemoArchive, endpoints: dict[str, tuple[str, int]],
                 processes: int, state_url: str | None = None) -> Path:
    """Write a migrator.toml for the demo archive and return its path.

    ``endpoints`` maps "main", "nonpixel" and "sinbin" to (AE title, port)
    on 127.0.0.1.
    """
    accepted = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
                if cx.abstract_syntax not in archive.unsupported_sop_classes]
    q = json.dumps
    lines = [
        "[state]", f"url = {q(state_url or 'sqlite:///' + str(folder / 'state.sqlite3'))}", "",
        "[legacy]", f"url = {q(archive.legacy_url)}", f"query = {q(archive.reconciliation_query)}",
        'path_column = "FilePath"', "",
        "[run]", f'ae_title = "{CALLING_AE}"', f"processes = {processes}", "",
        "[batches]", "max_instances = 20", "",
        "[routing]", f"exclusion_list = {q(str(archive.exclusion_list))}", "",
    ]
    for name, path in archive.roots.items():
        lines += ["[[roots]]", f"name = {q(name)}", f"path = {q(str(path))}",
                  f"legacy_path_prefix = {q(archive.legacy_path_prefixes[name])}", ""]
    for name, (ae_title, port) in endpoints.items():
        section = "[sinbin]" if name == "sinbin" else f"[destinations.{name}]"
        lines += [section, f'ae_title = "{ae_title}"', 'host = "127.0.0.1"', f"port = {port}"]
        if name != "sinbin":
            lines.append(f"accepted_sop_classes = {q(accepted)}")
        lines.append("")
    path = folder / "migrator.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_demo(folder: Path, processes: int = 2) -> DemoResult:
    """Build, migrate and check the demo archive in ``folder``."""
    prepare_folder(folder)
    archive = build_demo_archive(folder / "archive")
    scps = {name: StorageSCP(title, folder / "received" / name, [CALLING_AE]).start()
            for name, title in SCP_TITLES.items()}
    try:
        endpoints = {name: (scp.ae_title, scp.port) for name, scp in scps.items()}
        settings = load_settings(write_config(folder, archive, endpoints, processes))
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        summaries = plan(settings, sessions)
        run_embedded(settings, sessions)
    finally:
        for scp in scps.values():
            scp.stop()
    result = DemoResult(summaries)
    check(settings, sessions, archive, scps, result)
    return result


def check(settings: Settings, sessions: object, archive: DemoArchive, scps: dict[str, StorageSCP],
          result: DemoResult) -> None:
    """Compare every recorded outcome and every received instance with the expectations."""
    with sessions() as session:  # type: ignore[operator]
        rows = session.execute(
            select(StorageRoot.name, Instance.rel_path, Instance.outcome, Instance.id)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)).all()
        reasons = {instance_id: reason for instance_id, reason in
                   session.execute(select(SinBinItem.instance_id, SinBinItem.reason))}
    recorded = {(root, rel): (outcome, id_) for root, rel, outcome, id_ in rows}
    expected_uids: dict[str, set[str]] = {name: set() for name in scps}
    for expected in archive.expected:
        outcome, instance_id = recorded.pop((expected.root, expected.rel_path), (None, None))
        result.table[(expected.destination, outcome or "missing")] += 1
        where = f"{expected.root}/{expected.rel_path}"
        if outcome != DELIVERED_AS[expected.destination]:
            result.problems.append(f"{where}: expected {expected.destination}, recorded {outcome}")
            continue
        if expected.destination == "unreadable":
            continue
        expected_uids[expected.destination].add(expected.sop_instance_uid)
        if expected.destination == "sinbin":
            reason = reasons.get(instance_id, "")
            if not reason.startswith(expected.reason or ""):
                result.problems.append(f"{where}: sin bin reason {reason!r}, expected {expected.reason}")
        _check_received(scps[expected.destination], expected, where, result.problems)
    for (root, rel), (outcome, _) in recorded.items():
        result.problems.append(f"{root}/{rel}: indexed and recorded as {outcome} but not in the demo plan")
    for name, scp in scps.items():
        extra = set(scp.received) - expected_uids[name]
        for uid in sorted(extra):
            result.problems.append(f"{name} received {uid}, which should not be there")


def _check_received(scp: StorageSCP, expected: ExpectedOutcome, where: str, problems: list[str]) -> None:
    syntax = scp.received.get(expected.sop_instance_uid)
    if syntax is None:
        problems.append(f"{where}: recorded as delivered but {scp.ae_title} did not receive it")
        return
    if syntax != expected.transfer_syntax:
        problems.append(f"{where}: arrived as {syntax}, stored as {expected.transfer_syntax}")
    if expected.destination == "sinbin" or not expected.corrections:
        return
    ds = pydicom.dcmread(scp.folder / f"{expected.sop_instance_uid}.dcm", stop_before_pixels=True)
    for keyword, value in expected.corrections.items():
        if str(ds.get(keyword, "")) != value:
            problems.append(f"{where}: {keyword} not corrected at {scp.ae_title}")
