"""Both sending engines migrate the demo archive into storescp and into Orthanc alike."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import OrthancPeer, StoreSCP
from tests.support import CALLING_AE, Migration, prepare_migration

ENGINES = ["pynetdicom", "dcmsend"]
PEERS = ["storescp", "orthanc"]
SECTIONS = ["[destinations.main]\n", "[destinations.nonpixel]\n", "[sinbin]\n"]


@dataclass
class Run:
    migration: Migration
    #: SOP Instance UID -> the data set as the peer stored it.
    received: dict[str, Dataset]
    sinbin: StorageSCP


def _use_engine(config: Path, engine: str) -> None:
    text = config.read_text()
    for section in SECTIONS:
        assert section in text, section
        text = text.replace(section, f'{section}engine = "{engine}"\n')
    config.write_text(text)


def _migrate(tmp: Path, peer: str, engine: str) -> Run:
    with ExitStack() as stack:
        sinbin = stack.enter_context(StorageSCP("SINBIN", tmp / "sinbin", [CALLING_AE]))
        if peer == "orthanc":
            orthanc = stack.enter_context(OrthancPeer(tmp / "orthanc", "NEWPACS", [CALLING_AE]))
            address = ("NEWPACS", orthanc.dicom_port)
        else:
            storescp = stack.enter_context(StoreSCP(tmp / "storescp", "NEWPACS"))
            address = ("NEWPACS", storescp.port)
        migration = prepare_migration(tmp, f"sqlite:///{tmp / 'state.sqlite3'}",
                                      {"main": address, "nonpixel": address,
                                       "sinbin": ("SINBIN", sinbin.port)})
        _use_engine(tmp / "migrator.toml", engine)
        migration.settings = load_settings(tmp / "migrator.toml")
        assert {d.engine for d in migration.settings.destinations.values()} == {engine}
        assert migration.settings.sinbin.engine == engine
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        if peer == "orthanc":
            files = [orthanc.instance_file(item) for item in orthanc.instances()]
        else:
            files = [path.read_bytes() for path in storescp.received()]
    received = {}
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        received[str(ds.SOPInstanceUID)] = ds
    return Run(migration, received, sinbin)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Run]]:
    """The demo archive migrated once per peer and engine."""
    results = {}
    for peer in PEERS:
        for engine in ENGINES:
            results[peer, engine] = _migrate(tmp_path_factory.mktemp(f"{peer}-{engine}"), peer, engine)
    yield results
    for run in results.values():
        run.migration.sessions.kw["bind"].dispose()


@pytest.mark.parametrize("peer", PEERS)
def test_engines_record_same_outcomes(runs: dict[tuple[str, str], Run], peer: str) -> None:
    """Each file ends with the same outcome whichever engine sent it."""
    outcomes = {engine: runs[peer, engine].migration.outcomes() for engine in ENGINES}
    assert outcomes["dcmsend"] == outcomes["pynetdicom"]
    assert None not in outcomes["dcmsend"].values()


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_instance_arrives_once_as_stored(runs: dict[tuple[str, str], Run], peer: str,
                                               engine: str) -> None:
    """Images and non-pixel objects arrive in their stored transfer syntax with stored Pixel Data."""
    run = runs[peer, engine]
    migration = run.migration
    sent = migration.expected("main") + migration.expected("nonpixel")
    assert set(run.received) == {e.sop_instance_uid for e in sent}
    counts = migration.outcome_counts()
    assert counts["sent"] == len(sent)
    assert counts["sinbinned"] == len(migration.expected("sinbin"))
    assert set(run.sinbin.received) == {e.sop_instance_uid for e in migration.expected("sinbin")}
    for expected in sent:
        arrived = run.received[expected.sop_instance_uid]
        assert arrived.file_meta.TransferSyntaxUID == expected.transfer_syntax, expected.rel_path
        source = pydicom.dcmread(migration.archive.roots[expected.root] / expected.rel_path)
        if "PixelData" in source:
            assert arrived.PixelData == source.PixelData, expected.rel_path


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_corrected_headers_arrive_corrected(runs: dict[tuple[str, str], Run], peer: str,
                                            engine: str) -> None:
    """The legacy database's values arrive, non-ASCII names included, and are audited."""
    run = runs[peer, engine]
    migration = run.migration
    corrected = [e for e in migration.expected("main") + migration.expected("nonpixel") if e.corrections]
    assert any(not value.isascii() for e in corrected for value in e.corrections.values())
    for expected in corrected:
        arrived = run.received[expected.sop_instance_uid]
        for keyword, value in expected.corrections.items():
            assert str(arrived.data_element(keyword).value) == value, (expected.rel_path, keyword)
        [entry] = migration.audit_of(expected)
        assert {change["keyword"] for change in entry.changes or []} >= set(expected.corrections)
