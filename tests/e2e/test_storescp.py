"""End to end into DCMTK's storescp, with SQLite state (the embedded default)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pydicom

from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import StoreSCP
from tests.support import CALLING_AE, prepare_migration


def _digests(roots: Iterable[Path]) -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest()
            for root in roots for path in sorted(root.rglob("*")) if path.is_file()}


def test_migration_into_storescp(tmp_path: Path, sqlite_url: str) -> None:
    """Images and non-pixel objects reach storescp in their stored transfer syntax."""
    with StoreSCP(tmp_path / "storescp", "STORESCP") as dcmtk:
        sinbin = StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]).start()
        try:
            endpoints = {"main": ("STORESCP", dcmtk.port), "nonpixel": ("STORESCP", dcmtk.port),
                         "sinbin": ("SINBIN", sinbin.port)}
            migration = prepare_migration(tmp_path, sqlite_url, endpoints)
            before = _digests(migration.archive.roots.values())
            plan(migration.settings, migration.sessions)
            run_embedded(migration.settings, migration.sessions)
        finally:
            sinbin.stop()
        received = {}
        for path in dcmtk.received():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            received[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    sent = migration.expected("main") + migration.expected("nonpixel")
    assert {e.sop_instance_uid for e in sent} == set(received)
    for expected in sent:
        assert received[expected.sop_instance_uid] == expected.transfer_syntax, expected.rel_path
    # Corrections happen in memory: no source file changed.
    assert _digests(migration.archive.roots.values()) == before
    counts = migration.outcome_counts()
    assert counts["sent"] == len(sent)
    assert counts["sinbinned"] == len(migration.expected("sinbin"))
    assert set(sinbin.received) == {e.sop_instance_uid for e in migration.expected("sinbin")}
