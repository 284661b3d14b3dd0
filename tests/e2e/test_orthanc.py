"""End to end into Orthanc: the demo archive, PostgreSQL state, two Orthanc servers.

One Orthanc plays the new PACS (main and non-pixel ports both point at it),
the other the sin bin archive the department reviews.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
import pytest
from sqlalchemy import select

from migrator.state.models import Instance, SinBinItem, StorageRoot
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.conftest import postgres_database
from tests.peers import OrthancPeer
from tests.support import CALLING_AE, Migration, prepare_migration

JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Migration, OrthancPeer, OrthancPeer]]:
    tmp = tmp_path_factory.mktemp("orthanc-e2e")
    with postgres_database() as url, \
            OrthancPeer(tmp / "pacs", "NEWPACS", [CALLING_AE]) as pacs, \
            OrthancPeer(tmp / "sinbin", "SINBIN", [CALLING_AE]) as sinbin:
        endpoints = {"main": ("NEWPACS", pacs.dicom_port), "nonpixel": ("NEWPACS", pacs.dicom_port),
                     "sinbin": ("SINBIN", sinbin.dicom_port)}
        migration = prepare_migration(tmp, url, endpoints)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        yield migration, pacs, sinbin
        migration.sessions.kw["bind"].dispose()


def test_every_expected_instance_arrived(migrated) -> None:
    """Each image and non-pixel object is in the new PACS, and nothing else is."""
    migration, pacs, _ = migrated
    sent = migration.expected("main") + migration.expected("nonpixel")
    for expected in sent:
        assert pacs.find_sop_instance(expected.sop_instance_uid), expected.rel_path
    assert len(pacs.instances()) == len({e.sop_instance_uid for e in sent})


def test_transfer_syntax_and_pixel_data_kept(migrated) -> None:
    """Every instance keeps its stored transfer syntax and byte-identical Pixel Data."""
    migration, pacs, _ = migrated
    checked_j2k = 0
    for expected in migration.expected("main"):
        orthanc_id = pacs.find_sop_instance(expected.sop_instance_uid)
        assert pacs.transfer_syntax(orthanc_id) == expected.transfer_syntax
        source = pydicom.dcmread(migration.archive.roots[expected.root] / expected.rel_path)
        received = pydicom.dcmread(io.BytesIO(pacs.instance_file(orthanc_id)))
        assert received.file_meta.TransferSyntaxUID == expected.transfer_syntax
        assert received.PixelData == source.PixelData, expected.rel_path
        checked_j2k += expected.transfer_syntax in JPEG_2000
    assert checked_j2k >= 10


def test_headers_corrected_from_legacy_database(migrated) -> None:
    """Orthanc stores the legacy database's values, non-ASCII names included."""
    migration, pacs, _ = migrated
    corrected = [e for e in migration.expected("main") + migration.expected("nonpixel") if e.corrections]
    assert any(not value.isascii() for e in corrected for value in e.corrections.values())
    for expected in corrected:
        tags = pacs.instance_tags(pacs.find_sop_instance(expected.sop_instance_uid))
        for keyword, value in expected.corrections.items():
            assert tags.get(keyword) == value, (expected.rel_path, keyword)


def test_sinbin_items_arrived_with_reason(migrated) -> None:
    """Each held-back instance is in the sin bin archive and its reason is recorded."""
    migration, pacs, sinbin = migrated
    with migration.sessions() as session:
        reasons = {
            (root, rel): reason for root, rel, reason in session.execute(
                select(StorageRoot.name, Instance.rel_path, SinBinItem.reason)
                .join(Instance, Instance.id == SinBinItem.instance_id)
                .join(StorageRoot, StorageRoot.id == Instance.root_id))
        }
    held_back = migration.expected("sinbin")
    assert {e.reason for e in held_back} >= {"orphan", "duplicate", "superseded", "excluded_study",
                                             "unsupported_sop_class"}
    for expected in held_back:
        assert sinbin.find_sop_instance(expected.sop_instance_uid), expected.rel_path
        assert reasons[(expected.root, expected.rel_path)].startswith(expected.reason)
    assert len(sinbin.instances()) == len({e.sop_instance_uid for e in held_back})


def test_every_file_has_one_outcome(migrated) -> None:
    """No file is left without an outcome, and the counts match the plan."""
    migration, _, _ = migrated
    counts = migration.outcome_counts()
    assert None not in counts
    assert counts["sent"] == len(migration.expected("main")) + len(migration.expected("nonpixel"))
    assert counts["sinbinned"] == len(migration.expected("sinbin"))
    assert counts["unreadable"] == len(migration.expected("unreadable"))
