"""A destination that does not accept the stored transfer syntax: the decompress and sinbin policies.

The main destination is DCMTK's storescp with ``+xe``, which accepts the
uncompressed transfer syntaxes only. So it rejects every JPEG 2000, JPEG
and RLE file of the demo archive. These are single-frame and multi-frame
JPEG 2000 lossless, RGB JPEG 2000 with the reversible and the irreversible
colour transform, lossy JPEG 2000, JPEG baseline and RLE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from migrator.config import load_settings
from migrator.demo.archive import ExpectedOutcome
from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import StoreSCP
from tests.support import CALLING_AE, Migration, prepare_migration, running_scps

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
UNCOMPRESSED = {"1.2.840.10008.1.2", EXPLICIT_LITTLE}
LOSSLESS = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"}
LOSSY_METHODS = {"1.2.840.10008.1.2.4.91": "ISO_15444_1", "1.2.840.10008.1.2.4.50": "ISO_10918_1"}
ENGINES = ["pynetdicom", "dcmsend"]
LOSSY_NOTE = ("; its transfer syntax allows lossy compression, and the copy contains the stored "
              "pixel values, decoded without further loss")


class UncompressedStoreSCP(StoreSCP):
    """storescp that accepts the uncompressed transfer syntaxes only (``+xe`` instead of ``--accept-all``)."""

    def start(self) -> UncompressedStoreSCP:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._launch(["storescp", "--verbose", "--aetitle", self.ae_title, "--prefer-little",
                      "--promiscuous", "--bit-preserving", "--output-directory", str(self.output_dir),
                      "--default-filenames", "--filename-extension", ".dcm", str(self.port)])
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self


@dataclass
class Run:
    migration: Migration
    #: SOP Instance UID -> the data set as the main destination stored it.
    received: dict[str, Dataset]
    sinbin: StorageSCP


def _configure(config: Path, section: str, **fields: object) -> None:
    lines = "".join(f'{key} = "{value}"\n' for key, value in fields.items())
    text = config.read_text()
    assert section in text, section
    config.write_text(text.replace(section, section + lines))


def _migrate(tmp_path: Path, main: StoreSCP | StorageSCP, extra_config: str = "",
             **main_fields: object) -> Run:
    """Migrate the demo archive with ``main`` as the main destination, configured with ``main_fields``."""
    with running_scps(tmp_path) as scps:
        endpoints = {name: (scp.ae_title, scp.port) for name, scp in scps.items()}
        endpoints["main"] = (main.ae_title, main.port)
        migration = prepare_migration(tmp_path, f"sqlite:///{tmp_path / 'state.sqlite3'}", endpoints)
        config = tmp_path / "migrator.toml"
        _configure(config, "[destinations.main]\n", **main_fields)
        config.write_text(config.read_text() + extra_config)
        migration.settings = load_settings(config)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
    files = main.received() if isinstance(main, StoreSCP) else sorted(main.folder.glob("*.dcm"))
    datasets = [pydicom.dcmread(path) for path in files]
    return Run(migration, {str(ds.SOPInstanceUID): ds for ds in datasets}, scps["sinbin"])


def _source(migration: Migration, expected: ExpectedOutcome) -> Dataset:
    return pydicom.dcmread(migration.archive.roots[expected.root] / expected.rel_path)


def _compressed(migration: Migration) -> list[ExpectedOutcome]:
    return [e for e in migration.expected("main") if e.transfer_syntax not in UNCOMPRESSED]


def _expected_conversion(source: Dataset) -> list[dict[str, Any]]:
    """The audit entries that decoding ``source`` for the main destination must record."""
    syntax = str(source.file_meta.TransferSyntaxUID)
    reason = (f"destination main did not accept the presentation context {source.SOPClassUID} "
              f"with transfer syntax {syntax} ({UID(syntax).name})")
    lossy = syntax not in LOSSLESS
    entries: list[dict[str, Any]] = [{"keyword": "TransferSyntaxUID", "old": syntax, "new": EXPLICIT_LITTLE,
                                      "reason": reason + (LOSSY_NOTE if lossy else ""),
                                      "lossy_source": lossy}]
    if str(source.PhotometricInterpretation).startswith("YBR"):
        entries.append({"keyword": "PhotometricInterpretation", "old": source.PhotometricInterpretation,
                        "new": "RGB"})
    if lossy and not source.get("LossyImageCompression"):
        entries.append({"keyword": "LossyImageCompression", "old": None, "new": "01"})
        if not source.get("LossyImageCompressionMethod"):
            entries.append({"keyword": "LossyImageCompressionMethod", "old": None,
                            "new": LOSSY_METHODS[syntax]})
    return entries


def _pixel_data_length(ds: Dataset) -> int:
    length = (int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
              * int(ds.get("NumberOfFrames") or 1))
    return length + length % 2


def _assert_decoded_copy(run: Run, expected: ExpectedOutcome) -> None:
    """The instance arrived decoded in Explicit VR Little Endian, with the same pixels and an exact audit."""
    migration = run.migration
    source = _source(migration, expected)
    arrived = run.received[expected.sop_instance_uid]
    assert arrived.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert not arrived["PixelData"].is_undefined_length
    assert len(arrived.PixelData) == _pixel_data_length(arrived)
    assert arrived.get("NumberOfFrames") == source.get("NumberOfFrames")
    assert np.array_equal(arrived.pixel_array, source.pixel_array)
    for keyword, value in expected.corrections.items():
        assert str(arrived[keyword].value) == value, keyword
    [entry] = migration.audit_of(expected)
    assert (entry.outcome, entry.destination, entry.reason) == ("sent", "main", None)
    changes = entry.changes or []
    first = next(index for index, change in enumerate(changes) if change["keyword"] == "TransferSyntaxUID")
    corrections = changes[:first]
    charset = [change for change in corrections if change["keyword"] == "SpecificCharacterSet"]
    assert {change["keyword"]: change["new"] for change in corrections
            if change not in charset} == expected.corrections
    for change in corrections:
        old = source.get(change["keyword"])
        assert change["old"] == (None if old is None else str(old)), change
    if charset:
        assert charset[0]["new"] == "ISO_IR 192"
        assert any(not value.isascii() for value in expected.corrections.values())
    assert changes[first:] == _expected_conversion(source)


@pytest.mark.parametrize("engine", ENGINES)
def test_decompress_sends_explicit_little_endian(tmp_path: Path, engine: str) -> None:
    """Every compressed image arrives decoded with the source's pixels, and uncompressed ones as stored."""
    with UncompressedStoreSCP(tmp_path / "storescp", "NEWPACS") as main:
        run = _migrate(tmp_path, main, on_transfer_syntax_rejected="decompress", engine=engine)
    migration = run.migration
    outcomes = migration.outcomes()
    compressed = _compressed(migration)
    assert {e.transfer_syntax for e in compressed} == {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                                       "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"}
    assert any(int(_source(migration, e).get("NumberOfFrames") or 1) > 1 for e in compressed)
    assert any(_source(migration, e).SamplesPerPixel == 3 for e in compressed)
    for expected in compressed:
        assert outcomes[(expected.root, expected.rel_path)] == "sent", expected.rel_path
        _assert_decoded_copy(run, expected)
    for expected in migration.expected("main"):
        if expected.transfer_syntax in UNCOMPRESSED:
            assert outcomes[(expected.root, expected.rel_path)] == "sent"
            assert run.received[expected.sop_instance_uid].file_meta.TransferSyntaxUID == expected.transfer_syntax
            [entry] = migration.audit_of(expected)
            assert all(change["keyword"] != "TransferSyntaxUID" for change in entry.changes or [])
    assert set(run.received) == {e.sop_instance_uid for e in migration.expected("main")}
    assert set(run.sinbin.received) == {e.sop_instance_uid for e in migration.expected("sinbin")}


@pytest.mark.parametrize("engine", ENGINES)
def test_decompress_only_rejected_syntaxes(tmp_path: Path, engine: str) -> None:
    """One association carries JPEG 2000 lossless as stored and decoded copies of the rest."""
    accepted = ["1.2.840.10008.1.2.4.90", *sorted(UNCOMPRESSED)]
    with StorageSCP("NEWPACS", tmp_path / "newpacs", [CALLING_AE], transfer_syntaxes=accepted) as main:
        run = _migrate(tmp_path, main, on_transfer_syntax_rejected="decompress", engine=engine)
    migration = run.migration
    outcomes = migration.outcomes()
    for expected in _compressed(migration):
        assert outcomes[(expected.root, expected.rel_path)] == "sent", expected.rel_path
        if expected.transfer_syntax in accepted:
            arrived = run.received[expected.sop_instance_uid]
            assert arrived.file_meta.TransferSyntaxUID == expected.transfer_syntax
            assert arrived.PixelData == _source(migration, expected).PixelData
            [entry] = migration.audit_of(expected)
            assert all(change["keyword"] != "TransferSyntaxUID" for change in entry.changes or [])
        else:
            assert main.received[expected.sop_instance_uid] == EXPLICIT_LITTLE
            _assert_decoded_copy(run, expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_sinbin_holds_back_rejected_syntax(tmp_path: Path, engine: str) -> None:
    """Compressed images go to the sin bin as stored, the reason naming the destination and syntax."""
    with UncompressedStoreSCP(tmp_path / "storescp", "NEWPACS") as main:
        run = _migrate(tmp_path, main, on_transfer_syntax_rejected="sinbin", engine=engine)
    _assert_held_back(run)
    migration = run.migration
    uncompressed = [e for e in migration.expected("main") if e.transfer_syntax in UNCOMPRESSED]
    assert uncompressed
    for expected in uncompressed:
        assert migration.outcomes()[(expected.root, expected.rel_path)] == "sent"
    assert set(run.received) == {e.sop_instance_uid for e in uncompressed}


@pytest.mark.parametrize("engine", ENGINES)
def test_sinbin_when_no_context_accepted(tmp_path: Path, engine: str) -> None:
    """A destination that accepts none of an association's contexts still sends each image to the sin bin."""
    # Uncompressed images go to the non-pixel port, so every association to
    # main proposes compressed transfer syntaxes only, and storescp accepts none.
    rules = "".join(
        f'\n[[routing.rules]]\nname = "{name}"\nto = "{to}"\n{condition}\n'
        for name, to, condition in [
            ("orphan", "sinbin", 'reason = "orphan"\nreconciliation = ["orphan"]'),
            ("duplicate", "sinbin", 'reason = "duplicate"\nreconciliation = ["duplicate"]'),
            ("superseded", "sinbin", 'reason = "superseded"\nreconciliation = ["superseded"]'),
            ("excluded study", "sinbin", 'reason = "excluded_study"\nexcluded_study = true'),
            ("uncompressed", "nonpixel", f"transfer_syntax = {sorted(UNCOMPRESSED)!r}".replace("'", '"')),
            ("image", "main", "has_pixel_data = true"),
            ("no other rule", "sinbin", 'reason = "no_matching_rule"'),
        ])
    with UncompressedStoreSCP(tmp_path / "storescp", "NEWPACS") as main:
        run = _migrate(tmp_path, main, extra_config=rules, on_transfer_syntax_rejected="sinbin",
                       engine=engine)
    _assert_held_back(run)
    assert run.received == {}


def _assert_held_back(run: Run) -> None:
    migration = run.migration
    compressed = _compressed(migration)
    assert compressed
    for expected in compressed:
        assert migration.outcomes()[(expected.root, expected.rel_path)] == "sinbinned", expected.rel_path
        reason = (f"transfer_syntax_rejected: destination main did not accept the presentation "
                  f"context {_source(migration, expected).SOPClassUID} with transfer syntax "
                  f"{expected.transfer_syntax}")
        [entry] = migration.audit_of(expected)
        assert (entry.outcome, entry.destination, entry.reason) == ("sinbinned", "sinbin", reason)
        assert entry.route_rule == "image (transfer syntax rejected by main)"
        assert entry.changes is None
        assert run.sinbin.received[expected.sop_instance_uid] == expected.transfer_syntax
    assert not set(run.received) & {e.sop_instance_uid for e in compressed}

