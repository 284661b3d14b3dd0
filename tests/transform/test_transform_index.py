"""The legacy database's transformation column holds instances back; ``transform run`` sends them from the index.

A storage root with five sample files is planned and migrated. The legacy
SQLite database names a transformation for two of them, one spelled
validly and one not, and a CSV loaded before the migration lists a third,
so the migration skips these with reason "needs transformation" and sends
the other two untransformed. ``transform run``
then imports the valid one and sends it transformed from its indexed file,
a CSV resolves the invalid one, and a CSV entry for an instance already
sent untransformed needs ``transform.new_uid``. Both destinations are
pynetdicom storage SCPs that write what they receive; no legacy PACS is
configured, so a UID outside the index fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, TransformItem
from migrator.transform.transformation import Transformation, apply
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.transform.support import (
    CALLING_AE,
    copy_sample,
    frames_of,
    migrator,
    write_config,
    write_csv,
    write_legacy_db,
)

SAMPLES = {"held": "SC_rgb_rle.dcm", "invalid": "OBXXXX1A.dcm", "plain": "SC_rgb.dcm",
           "sent_first": "SC_rgb_small_odd.dcm", "listed_first": "emri_small.dcm",
           "sent_geometry": "CT_small.dcm", "orphan": "MR_small.dcm"}
LEGACY_VALUES = {"held": "Rotate clockwise 90 degrees", "invalid": "turn it around", "plain": None,
                 "sent_first": None, "listed_first": None, "sent_geometry": None}


@dataclass
class Archive:
    sources: dict[str, Dataset]
    config: Path
    main: StorageSCP
    sinbin: StorageSCP
    sessions: Any
    tmp: Path

    def uid(self, name: str) -> str:
        return str(self.sources[name].SOPInstanceUID)

    def audit(self, name: str) -> list[tuple[str, str | None, str | None]]:
        with self.sessions() as session:
            return [(entry.outcome, entry.destination, entry.reason) for entry in session.scalars(
                select(AuditEntry).join(Instance, Instance.id == AuditEntry.instance_id)
                .where(Instance.sop_instance_uid == self.uid(name)).order_by(AuditEntry.id))]

    def outcome(self, name: str) -> str | None:
        with self.sessions() as session:
            return session.scalars(select(Instance.outcome).where(Instance.sop_instance_uid == self.uid(name))).one()

    def item(self, uid: str) -> TransformItem:
        with self.sessions() as session:
            return session.scalars(select(TransformItem).where(TransformItem.sop_instance_uid == uid)).one()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    tmp = tmp_path_factory.mktemp("transform-index")
    sources = {name: copy_sample(sample, tmp / "archive" / "day1" / f"{name}.dcm")
               for name, sample in SAMPLES.items()}
    legacy_url = write_legacy_db(tmp / "legacy.sqlite", {str(sources[name].SOPInstanceUID): value
                                                        for name, value in LEGACY_VALUES.items()})
    with StorageSCP("NEWPACS", tmp / "main", [CALLING_AE]) as main, \
            StorageSCP("SINBIN", tmp / "sinbin", [CALLING_AE]) as sinbin:
        common: dict[str, Any] = dict(state_url=f"sqlite:///{tmp / 'state.sqlite3'}", legacy_url=legacy_url,
                                      root=tmp / "archive", main=("NEWPACS", main.port),
                                      sinbin=("SINBIN", sinbin.port))
        config = write_config(tmp / "migrator.toml", **common, transform={})
        write_config(tmp / "new-uid.toml", **common, transform={"new_uid": True})
        settings = load_settings(config)
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        listing = write_csv(tmp / "before.csv", [(str(sources["listed_first"].SOPInstanceUID), "rotate_90_ccw")])
        loaded = migrator("transform", "load", str(listing), "--config", str(config))
        assert loaded.exit_code == 0, loaded.output
        plan(settings, sessions)
        run_embedded(settings, sessions)
        yield Archive(sources, config, main, sinbin, sessions, tmp)
        sessions.kw["bind"].dispose()


def test_migration_holds_back_listed_instances(archive: Archive) -> None:
    """Instances with a transformation in the legacy database or a loaded list are skipped; the others are sent."""
    for name in ("held", "invalid", "listed_first"):
        assert archive.audit(name)[0] == ("skipped", None, "needs transformation"), name
        assert archive.uid(name) not in archive.main.received
    for name in ("plain", "sent_first"):
        assert archive.outcome(name) == "sent", name


def test_run_sends_held_instance_from_index(archive: Archive) -> None:
    """The valid legacy value becomes an item, and the indexed file arrives rotated."""
    result = migrator("transform", "run", "--config", str(archive.config))
    assert result.exit_code == 0, result.output
    assert "1 instance(s) held back by the migration added from the legacy database" in result.stdout
    # The console wraps long lines; the words are compared without the line breaks.
    assert "instance 2 (day1/invalid.dcm): 'turn it around'" in " ".join(result.output.split())
    item = archive.item(archive.uid("held"))
    assert (item.status, item.source, item.retrieved_from, item.transformation) == (
        "sent", "legacy_db", "index", "rotate_90_cw")
    assert [outcome for outcome, _, _ in archive.audit("held")] == ["skipped", "sent"]
    received = pydicom.dcmread(archive.main.folder / f"{archive.uid('held')}.dcm")
    source = archive.sources["held"]
    assert received.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert np.array_equal(frames_of(received), apply(frames_of(source), Transformation.ROTATE_90_CW))


def test_listed_instance_sent_after_hold(archive: Archive) -> None:
    """The instance listed before the migration was sent by the run above, transformed."""
    item = archive.item(archive.uid("listed_first"))
    assert (item.status, item.source, item.retrieved_from) == ("sent", "csv", "index")
    assert [outcome for outcome, _, _ in archive.audit("listed_first")] == ["skipped", "sent"]
    received = pydicom.dcmread(archive.main.folder / f"{archive.uid('listed_first')}.dcm")
    assert np.array_equal(frames_of(received),
                          apply(frames_of(archive.sources["listed_first"]), Transformation.ROTATE_90_CCW))


def test_status_counts_held_back_and_items(archive: Archive) -> None:
    result = migrator("transform", "status", "--config", str(archive.config))
    assert result.exit_code == 0, result.output
    assert "from legacy_db: 1 sent" in result.stdout
    # The invalid value stays held back until a list names its transformation.
    assert "1 instance(s) held back by the migration wait" in result.stdout


def test_csv_resolves_invalid_value(archive: Archive) -> None:
    listing = write_csv(archive.tmp / "invalid.csv", [(archive.uid("invalid"), "flip vertical")])
    assert migrator("transform", "load", str(listing), "--config", str(archive.config)).exit_code == 0
    result = migrator("transform", "run", "--config", str(archive.config))
    assert result.exit_code == 0, result.output
    item = archive.item(archive.uid("invalid"))
    assert (item.status, item.source, item.source_detail) == ("sent", "csv", "invalid.csv line 2")
    received = pydicom.dcmread(archive.main.folder / f"{archive.uid('invalid')}.dcm")
    assert np.array_equal(frames_of(received),
                          apply(frames_of(archive.sources["invalid"]), Transformation.FLIP_VERTICAL))


def test_sent_instance_needs_new_uid(archive: Archive) -> None:
    """An instance sent untransformed fails without new_uid, keeps its outcome, and arrives with new_uid."""
    uid = archive.uid("sent_first")
    listing = write_csv(archive.tmp / "sent.csv", [(uid, "rotate 180")])
    assert migrator("transform", "load", str(listing), "--config", str(archive.config)).exit_code == 0
    refused = migrator("transform", "run", "--config", str(archive.config))
    assert refused.exit_code == 1, refused.output
    assert archive.item(uid).status == "failed"
    assert "set transform.new_uid = true" in (archive.item(uid).reason or "")
    assert archive.outcome("sent_first") == "sent"

    new_uid_config = archive.config.with_name("new-uid.toml")
    result = migrator("transform", "run", "--config", str(new_uid_config))
    assert result.exit_code == 0, result.output
    item = archive.item(uid)
    assert item.status == "sent"
    assert item.new_sop_instance_uid is not None
    assert item.new_sop_instance_uid != uid
    received = pydicom.dcmread(archive.main.folder / f"{item.new_sop_instance_uid}.dcm")
    assert "rotated 180 degrees from SOP Instance UID " + uid in received.DerivationDescription
    assert np.array_equal(frames_of(received), apply(frames_of(archive.sources["sent_first"]),
                                                     Transformation.ROTATE_180))
    trace = migrator("trace", str(item.new_sop_instance_uid), "--config", str(archive.config))
    assert trace.exit_code == 0, trace.output
    assert "transform: rotate_180" in trace.stdout
    assert f"changed SOPInstanceUID: '{uid}' -> '{item.new_sop_instance_uid}'" in trace.stdout


def test_refused_transform_keeps_sent_outcome(archive: Archive) -> None:
    """A sent CT image refused for its patient geometry goes to the sin bin but stays sent."""
    uid = archive.uid("sent_geometry")
    assert archive.outcome("sent_geometry") == "sent"
    listing = write_csv(archive.tmp / "geometry.csv", [(uid, "flip_vertical")])
    assert migrator("transform", "load", str(listing), "--config", str(archive.config)).exit_code == 0
    migrator("transform", "run", "--config", str(archive.config.with_name("new-uid.toml")))
    assert archive.item(uid).status == "sinbinned"
    assert archive.outcome("sent_geometry") == "sent"
    assert archive.audit("sent_geometry")[-1][0] == "sinbinned"


def test_orphan_stays_in_sinbin(archive: Archive) -> None:
    """An instance the migration held in the sin bin is not sent by a transform around its review."""
    uid = archive.uid("orphan")
    assert archive.outcome("orphan") == "sinbinned"
    listing = write_csv(archive.tmp / "orphan.csv", [(uid, "rotate_180")])
    assert migrator("transform", "load", str(listing), "--config", str(archive.config)).exit_code == 0
    migrator("transform", "run", "--config", str(archive.config))
    item = archive.item(uid)
    assert item.status == "failed"
    assert "held in the sin bin by the migration" in (item.reason or "")
    assert archive.outcome("orphan") == "sinbinned"
    assert uid not in archive.main.received


def test_uid_outside_index_fails_without_legacy_pacs(archive: Archive) -> None:
    uid = generate_uid()
    listing = write_csv(archive.tmp / "unknown.csv", [(uid, "rotate_90_ccw")])
    assert migrator("transform", "load", str(listing), "--config", str(archive.config)).exit_code == 0
    result = migrator("transform", "run", "--config", str(archive.config))
    assert result.exit_code == 1, result.output
    item = archive.item(uid)
    assert item.status == "failed"
    assert item.reason == ("not in the index, and no legacy PACS is configured to retrieve it from; set "
                           "transform.legacy_ae_title, legacy_host and legacy_port")
