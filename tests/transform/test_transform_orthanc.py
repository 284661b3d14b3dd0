"""``migrator transform`` end to end: Orthanc as the legacy PACS, DCMTK storescp as the destination.

Orthanc (AE title OLDPACS) stores the sample instances and answers C-MOVE,
sending them to our storage SCP, which its DicomModalities lists. The
transformed instances go to storescp, which writes each one to disk as
received, and the refused one goes to a pynetdicom storage SCP as the sin
bin. The module runs ``transform load`` and ``transform run`` once, then
once more with ``allow_patient_geometry`` for the sinbinned MR image, and
the tests check what arrived.

Every sample is a pydicom or pydicom-data test file with new UIDs. Two are
derived further, because no test file has the case: SC_rgb.dcm gets a
non-square Pixel Spacing, an Imager Pixel Spacing, a Patient Orientation
and an Icon Image Sequence (a 25 x 25 MONOCHROME2 icon of its red
channel), and SC_rgb_expb_2frame.dcm gets a Patient Orientation.
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
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, SinBinItem, TransformItem
from migrator.transform.transformation import Transformation, apply
from tests.conftest import postgres_database
from tests.peers import OrthancPeer, StoreSCP, free_port
from tests.transform.support import (
    CALLING_AE,
    copy_sample,
    frames_of,
    migrator,
    write_config,
    write_csv,
    write_legacy_db,
)

LEGACY_AE = "OLDPACS"
SCP_AE = "MIGRATORSCP"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


class LegacyOrthanc(OrthancPeer):
    """Orthanc that answers C-MOVE from our calling AE title and sends to our storage SCP."""

    def __init__(self, work_dir: Path, scp_port: int) -> None:
        super().__init__(work_dir, LEGACY_AE, [CALLING_AE])
        self.scp_port = scp_port

    def build_config(self) -> dict[str, Any]:
        config = super().build_config()
        config["DicomModalities"][SCP_AE] = {"AET": SCP_AE, "Host": "127.0.0.1", "Port": self.scp_port}
        return config

    def upload(self, path: Path) -> None:
        self.session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=10).raise_for_status()


def _with_icon_and_grid(ds: Dataset) -> None:
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.ImagerPixelSpacing = ["0.6", "0.3"]
    ds.PatientOrientation = ["L", "F"]
    icon = Dataset()
    red = ds.pixel_array[::4, ::4, 0]
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows, icon.Columns = red.shape
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = np.ascontiguousarray(red).tobytes()
    ds.IconImageSequence = Sequence([icon])


def _with_orientation(ds: Dataset) -> None:
    ds.PatientOrientation = ["A", "FR"]


@dataclass(frozen=True)
class Case:
    """One instance in the legacy PACS and the transformation it is listed with."""

    name: str
    sample: str
    transformation: Transformation
    change: Any = None


CASES = [
    Case("us_multiframe_rle_palette", "OBXXXX1A_rle_2frame.dcm", Transformation.ROTATE_90_CW),
    Case("rgb_j2k_lossless_rct", "US1_J2KR.dcm", Transformation.ROTATE_90_CCW),
    Case("rgb_j2k_lossy", "SC_rgb_gdcm_KY.dcm", Transformation.FLIP_HORIZONTAL),
    Case("rgb_8bit_icon", "SC_rgb.dcm", Transformation.ROTATE_90_CW, _with_icon_and_grid),
    Case("mr_12bit_multiframe_j2k", "emri_small_jpeg_2k_lossless.dcm", Transformation.ROTATE_180),
    Case("rgb_16bit", "SC_rgb_16bit.dcm", Transformation.FLIP_VERTICAL),
    Case("nm_16bit_signed_j2k_lossy", "JPEG2000.dcm", Transformation.ROTATE_90_CW),
    Case("rgb_jpeg_baseline_422", "SC_rgb_dcmtk_+eb+cy+np.dcm", Transformation.ROTATE_180),
    Case("rgb_big_endian_2frame", "SC_rgb_expb_2frame.dcm", Transformation.ROTATE_90_CCW, _with_orientation),
    Case("mr_16bit_signed_patient_geometry", "MR_small_jp2klossless.dcm", Transformation.ROTATE_90_CW),
]
GEOMETRY_CASE = "mr_16bit_signed_patient_geometry"
#: Listed, but not stored in the legacy PACS.
ABSENT = [generate_uid(), generate_uid()]


@dataclass
class Run:
    sources: dict[str, Dataset]
    destination: StoreSCP
    sinbin: StorageSCP
    sinbin_after_first_run: dict[str, str]
    statuses_after_first_run: dict[str, str]
    config: Path
    geometry_config: Path
    first_run: Any
    second_run: Any
    sessions: Any

    def received(self, name: str) -> Dataset:
        uid = str(self.sources[name].SOPInstanceUID)
        [path] = self.destination.output_dir.glob(f"*.{uid}.dcm")
        return pydicom.dcmread(path)

    def items(self) -> dict[str, TransformItem]:
        with self.sessions() as session:
            return {item.sop_instance_uid: item for item in session.scalars(select(TransformItem))}

    def sinbin_items(self, name: str) -> list[tuple[str | None, bool]]:
        with self.sessions() as session:
            items = session.scalars(select(SinBinItem).join(Instance, Instance.id == SinBinItem.instance_id)
                                    .where(Instance.sop_instance_uid == str(self.sources[name].SOPInstanceUID)))
            return [(item.released_to, item.released_at is not None) for item in items]

    def audit(self, name: str) -> list[AuditEntry]:
        with self.sessions() as session:
            item = session.scalars(select(TransformItem).where(
                TransformItem.sop_instance_uid == str(self.sources[name].SOPInstanceUID))).one()
            return list(session.scalars(select(AuditEntry).where(AuditEntry.instance_id == item.instance_id)
                                        .order_by(AuditEntry.id)))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("transform-orthanc")
    scp_port = free_port()
    sources = {case.name: copy_sample(case.sample, tmp / "samples" / f"{case.name}.dcm", case.change)
               for case in CASES}
    with postgres_database() as state_url, LegacyOrthanc(tmp / "legacy", scp_port) as legacy, \
            StoreSCP(tmp / "destination", "NEWPACS") as destination, \
            StorageSCP("SINBIN", tmp / "sinbin", [CALLING_AE]) as sinbin:
        for case in CASES:
            legacy.upload(tmp / "samples" / f"{case.name}.dcm")
        (tmp / "archive").mkdir()
        common: dict[str, Any] = dict(
            # The legacy database has a row for every instance that the legacy PACS stores.
            state_url=state_url, root=tmp / "archive",
            legacy_url=write_legacy_db(tmp / "legacy.sqlite",
                                       {str(source.SOPInstanceUID): None for source in sources.values()}),
            main=("NEWPACS", destination.port), sinbin=("SINBIN", sinbin.port), transformation_column=False)
        transform = {"legacy_ae_title": LEGACY_AE, "legacy_host": "127.0.0.1", "legacy_port": legacy.dicom_port,
                     "scp_ae_title": SCP_AE, "scp_port": scp_port, "scp_folder": "received",
                     "move_batch_size": 4, "arrival_wait": 1}
        config = write_config(tmp / "migrator.toml", **common, transform=transform)
        geometry_config = write_config(tmp / "geometry.toml", **common,
                                       transform={**transform, "allow_patient_geometry": True})
        # The absent UIDs sit in the second batch of four, among instances the PACS stores.
        rows = [(str(sources[case.name].SOPInstanceUID), case.transformation.value) for case in CASES]
        rows[5:5] = [(uid, "rotate 180") for uid in ABSENT]
        listing = write_csv(tmp / "transformations.csv", rows)
        loaded = migrator("transform", "load", str(listing), "--config", str(config))
        assert loaded.exit_code == 0, loaded.output
        first_run = migrator("transform", "run", "--config", str(config))
        sinbin_after_first_run = dict(sinbin.received)
        sessions = open_state(load_settings(config).state.sqlalchemy_url())
        with sessions() as session:
            statuses = {item.sop_instance_uid: item.status for item in session.scalars(select(TransformItem))}
        second_run = migrator("transform", "run", "--sinbinned", "--config", str(geometry_config))
        yield Run(sources, destination, sinbin, sinbin_after_first_run, statuses, config, geometry_config,
                  first_run, second_run, sessions)
        sessions.kw["bind"].dispose()


def test_run_outcomes(run: Run) -> None:
    """Each listed UID ends with one status: sent, sinbinned for patient geometry, or failed when absent."""
    assert run.first_run.exit_code == 1, run.first_run.output
    expected = {str(run.sources[case.name].SOPInstanceUID): "sent" for case in CASES}
    expected.update({uid: "failed" for uid in ABSENT})
    expected[str(run.sources[GEOMETRY_CASE].SOPInstanceUID)] = "sinbinned"
    assert run.statuses_after_first_run == expected
    expected[str(run.sources[GEOMETRY_CASE].SOPInstanceUID)] = "sent"
    assert {uid: item.status for uid, item in run.items().items()} == expected


def test_pixels_equal_numpy_transformation(run: Run) -> None:
    """Every frame decoded at the destination equals numpy's rotation or flip of the source, exactly."""
    for case in CASES:
        source = run.sources[case.name]
        received = run.received(case.name)
        assert np.array_equal(frames_of(received), apply(frames_of(source), case.transformation)), case.name
        assert received.SOPInstanceUID == source.SOPInstanceUID, case.name


def test_rows_and_columns_follow_pixels(run: Run) -> None:
    for case in CASES:
        source, received = run.sources[case.name], run.received(case.name)
        if case.transformation.quarter_turn:
            assert (received.Rows, received.Columns) == (source.Columns, source.Rows), case.name
        else:
            assert (received.Rows, received.Columns) == (source.Rows, source.Columns), case.name


def test_transfer_syntax_lossless_or_kept(run: Run) -> None:
    """Lossless sources keep their transfer syntax; lossy ones arrive as JPEG 2000 Lossless."""
    lossy = {"rgb_j2k_lossy", "nm_16bit_signed_j2k_lossy", "rgb_jpeg_baseline_422"}
    for case in CASES:
        source_syntax = run.sources[case.name].file_meta.TransferSyntaxUID
        received_syntax = run.received(case.name).file_meta.TransferSyntaxUID
        expected = JPEG2000_LOSSLESS if case.name in lossy else source_syntax
        assert received_syntax == expected, case.name


def test_instances_arrived_by_cmove_in_stored_syntax(run: Run, tmp_path: Path) -> None:
    """Our SCP received every stored instance from Orthanc as stored, so the decoders ran on each syntax."""
    items = run.items()
    for case in CASES:
        source = run.sources[case.name]
        item = items[str(source.SOPInstanceUID)]
        assert item.retrieved_from == "c-move", case.name
        received = pydicom.dcmread(run.config.parent / "received" / f"{source.SOPInstanceUID}.dcm")
        assert received.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID, case.name


def _icon_pixels(icon: Dataset) -> np.ndarray:
    # The icon is native 8-bit MONOCHROME2, and as a sequence item it has no transfer syntax for pydicom.
    return np.frombuffer(icon.PixelData, dtype=np.uint8)[:icon.Rows * icon.Columns].reshape(icon.Rows, icon.Columns)


def test_grid_attributes_follow_pixels(run: Run) -> None:
    """Spacings swap on a quarter turn, Patient Orientation turns with the axes, the icon turns too."""
    received = run.received("rgb_8bit_icon")
    assert [str(v) for v in received.PixelSpacing] == ["0.25", "0.5"]
    assert [str(v) for v in received.ImagerPixelSpacing] == ["0.3", "0.6"]
    # Rotated clockwise, the row direction points where the column direction pointed
    # (F), reversed (H), and the column direction points where the row direction did (L).
    assert list(received.PatientOrientation) == ["H", "L"]
    source_icon = run.sources["rgb_8bit_icon"].IconImageSequence[0]
    received_icon = received.IconImageSequence[0]
    assert (received_icon.Rows, received_icon.Columns) == (source_icon.Columns, source_icon.Rows)
    assert np.array_equal(_icon_pixels(received_icon), np.rot90(_icon_pixels(source_icon), -1))
    # Anticlockwise: the row direction becomes the column direction (FR), and the
    # column direction becomes the reversed row direction (P).
    assert list(run.received("rgb_big_endian_2frame").PatientOrientation) == ["FR", "P"]


def test_absent_uids_failed_per_instance(run: Run) -> None:
    """The C-MOVE batch with UIDs that Orthanc lacks delivers the others and names each absent one."""
    items = run.items()
    for uid in ABSENT:
        assert items[uid].status == "failed"
        assert items[uid].instance_id is None
        assert items[uid].reason is not None and items[uid].reason.startswith("not received")
        assert "OLDPACS" in items[uid].reason
    status = migrator("transform", "status", "--list", "failed", "--config", str(run.config))
    assert status.exit_code == 0, status.output
    for uid in ABSENT:
        assert uid in status.stdout


def test_patient_geometry_sinbinned_then_recomputed(run: Run) -> None:
    """The MR image goes untransformed to the sin bin, then with allow_patient_geometry arrives recomputed."""
    source = run.sources[GEOMETRY_CASE]
    uid = str(source.SOPInstanceUID)
    assert list(run.sinbin_after_first_run) == [uid]
    sinbinned = pydicom.dcmread(run.sinbin.folder / f"{uid}.dcm")
    assert np.array_equal(sinbinned.pixel_array, source.pixel_array)
    outcomes = [(entry.outcome, entry.destination) for entry in run.audit(GEOMETRY_CASE)]
    assert outcomes == [("sinbinned", "sinbin"), ("sent", "main")]
    assert run.audit(GEOMETRY_CASE)[0].reason.startswith("transform_refused: Image Orientation (Patient)")
    # Its sin bin item is released to main, so that no release sends the untransformed copy there.
    assert run.sinbin_items(GEOMETRY_CASE) == [("main", True)]
    # The absent UIDs fail again in the second run.
    assert run.second_run.exit_code == 1, run.second_run.output

    received = run.received(GEOMETRY_CASE)
    rows = int(source.Rows)
    old_x = np.array([float(v) for v in source.ImageOrientationPatient[:3]])
    old_y = np.array([float(v) for v in source.ImageOrientationPatient[3:]])
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    new_orientation = np.array([float(v) for v in received.ImageOrientationPatient])
    assert np.allclose(new_orientation, np.concatenate([-old_y, old_x]))
    # The first pixel after a clockwise turn is the source's bottom-left one.
    expected_position = np.array([float(v) for v in source.ImagePositionPatient]) + (rows - 1) * row_spacing * old_y
    assert np.allclose([float(v) for v in received.ImagePositionPatient], expected_position, atol=1e-4)
    assert [float(v) for v in received.PixelSpacing] == [column_spacing, row_spacing]


def test_trace_shows_transformation(run: Run) -> None:
    uid = str(run.sources["rgb_j2k_lossy"].SOPInstanceUID)
    result = migrator("trace", uid, "--config", str(run.config))
    assert result.exit_code == 0, result.output
    assert "transform: flip_horizontal" in result.stdout
    assert "flipped horizontally" in result.stdout
    assert "changed TransferSyntaxUID: '1.2.840.10008.1.2.4.91' -> '1.2.840.10008.1.2.4.90'" in result.stdout
    assert "the source is lossy" in result.stdout


def test_status_counts(run: Run) -> None:
    result = migrator("transform", "status", "--config", str(run.config))
    assert result.exit_code == 0, result.output
    assert "from csv: 2 failed, 10 sent" in result.stdout
