"""Check that the Orthanc and storescp peers from peers.py receive real C-STOREs."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

# The orthanc and storescp fixtures come from tests/conftest.py, which
# registers tests.peers as a pytest plugin.
from tests.peers import HOST, OrthancPeer, PeerStartError, StoreSCP

JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"

# Sample files that ship with pydicom, so no download is needed.
JPEG_2000_SAMPLES = [
    pytest.param("MR_small_jp2klossless.dcm", JPEG_2000_LOSSLESS, id="jpeg2000-lossless"),
    pytest.param("JPEG2000.dcm", JPEG_2000, id="jpeg2000"),
]

# A-ASSOCIATE-RJ field values from DICOM PS3.8 table 9-21.
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03
CALLED_AE_NOT_RECOGNIZED = 0x07


def load_sample(file_name: str) -> Dataset:
    path = get_testdata_file(file_name, download=False)
    assert path is not None, f"pydicom test file {file_name} is missing"
    return pydicom.dcmread(path)


def load_sample_with_unknown_sop_class() -> Dataset:
    """Load a JPEG 2000 Lossless sample and give it a new, private SOP Class UID."""
    dataset = load_sample("MR_small_jp2klossless.dcm")
    unknown_sop_class = generate_uid()
    dataset.SOPClassUID = unknown_sop_class
    dataset.file_meta.MediaStorageSOPClassUID = unknown_sop_class
    return dataset


def associate(
    port: int, called_ae_title: str, dataset: Dataset, calling_ae_title: str = "MIGRATOR"
) -> Association:
    """Request an association that proposes only the data set's SOP class and transfer syntax."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])
    assoc = ae.associate(HOST, port, ae_title=called_ae_title, bind_address=(HOST, 0))
    if assoc.is_established:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def send_c_store(port: int, called_ae_title: str, dataset: Dataset) -> int:
    """Send one C-STORE from MIGRATOR and return the response status."""
    assoc = associate(port, called_ae_title, dataset)
    assert assoc.is_established, f"association with {called_ae_title} at port {port} failed"
    try:
        response = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    assert "Status" in response, "C-STORE got no response"
    status: int = response.Status
    return status


@pytest.mark.parametrize(("file_name", "transfer_syntax"), JPEG_2000_SAMPLES)
def test_orthanc_stores_jpeg2000_unchanged(
    orthanc: OrthancPeer, file_name: str, transfer_syntax: str
) -> None:
    sent = load_sample(file_name)
    assert sent.file_meta.TransferSyntaxUID == transfer_syntax

    status = send_c_store(orthanc.dicom_port, orthanc.ae_title, sent)

    assert status == 0x0000
    orthanc_id = orthanc.find_sop_instance(sent.SOPInstanceUID)
    assert orthanc_id is not None
    assert orthanc.instances() == [orthanc_id]
    assert orthanc.transfer_syntax(orthanc_id) == transfer_syntax
    assert orthanc.instance_tags(orthanc_id)["SOPInstanceUID"] == sent.SOPInstanceUID

    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.PixelData == sent.PixelData


def test_orthanc_stores_unknown_sop_class(orthanc: OrthancPeer) -> None:
    sent = load_sample_with_unknown_sop_class()

    status = send_c_store(orthanc.dicom_port, orthanc.ae_title, sent)

    assert status == 0x0000
    orthanc_id = orthanc.find_sop_instance(sent.SOPInstanceUID)
    assert orthanc_id is not None
    assert orthanc.instance_tags(orthanc_id)["SOPClassUID"] == sent.SOPClassUID
    assert orthanc.transfer_syntax(orthanc_id) == JPEG_2000_LOSSLESS


def test_orthanc_find_unknown_uid_returns_none(orthanc: OrthancPeer) -> None:
    assert orthanc.find_sop_instance("1.2.3.4.5.6.7.8.9") is None
    assert orthanc.instances() == []


@pytest.mark.parametrize(
    ("calling_ae_title", "called_ae_title", "diagnostic"),
    [
        pytest.param("INTRUDER", "ORTHANC", CALLING_AE_NOT_RECOGNIZED, id="unknown-calling-ae"),
        pytest.param("migrator", "ORTHANC", CALLING_AE_NOT_RECOGNIZED, id="calling-ae-case"),
        pytest.param("MIGRATOR", "WRONG", CALLED_AE_NOT_RECOGNIZED, id="wrong-called-ae"),
    ],
)
def test_orthanc_rejects_unknown_ae_titles(
    orthanc: OrthancPeer, calling_ae_title: str, called_ae_title: str, diagnostic: int
) -> None:
    sample = load_sample("MR_small_jp2klossless.dcm")

    assoc = associate(orthanc.dicom_port, called_ae_title, sample, calling_ae_title)

    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert rejection is not None
    assert rejection.result == REJECTED_PERMANENT
    assert rejection.result_source == SOURCE_SERVICE_USER
    assert rejection.diagnostic == diagnostic
    assert orthanc.instances() == []


def test_orthanc_rest_requires_password(orthanc: OrthancPeer) -> None:
    url = f"{orthanc.url}/instances"
    with requests.Session() as session:
        session.trust_env = False
        without_password = session.get(url, timeout=10)
        wrong_password = session.get(url, auth=(orthanc.http_auth[0], "wrong"), timeout=10)
        with_password = session.get(url, auth=orthanc.http_auth, timeout=10)

    assert without_password.status_code == 401
    assert wrong_password.status_code == 401
    assert with_password.status_code == 200


def test_orthanc_restart_keeps_instances(tmp_path: Path) -> None:
    sample = load_sample("MR_small_jp2klossless.dcm")
    peer = OrthancPeer(tmp_path / "orthanc", "ORTHANC", ["MIGRATOR"])
    with peer:
        assert send_c_store(peer.dicom_port, peer.ae_title, sample) == 0x0000
    assert peer.process is None

    with peer:
        orthanc_id = peer.find_sop_instance(sample.SOPInstanceUID)
        assert orthanc_id is not None
        assert peer.transfer_syntax(orthanc_id) == JPEG_2000_LOSSLESS


def test_orthanc_start_fails_on_used_port(tmp_path: Path) -> None:
    peer = OrthancPeer(tmp_path / "orthanc", "ORTHANC", ["MIGRATOR"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupant:
        occupant.bind((HOST, peer.dicom_port))

        with pytest.raises(PeerStartError, match="exited with code") as error:
            peer.start()

    assert "orthanc.log" in str(error.value)
    assert "already in use" in str(error.value)
    assert peer.process is None


@pytest.mark.parametrize(("file_name", "transfer_syntax"), JPEG_2000_SAMPLES)
def test_storescp_writes_jpeg2000_unchanged(
    storescp: StoreSCP, file_name: str, transfer_syntax: str
) -> None:
    sent = load_sample(file_name)
    assert sent.file_meta.TransferSyntaxUID == transfer_syntax

    status = send_c_store(storescp.port, storescp.ae_title, sent)

    assert status == 0x0000
    received = storescp.received()
    assert len(received) == 1
    assert received[0].name.endswith(f".{sent.SOPInstanceUID}.dcm")

    stored = pydicom.dcmread(received[0])
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.PixelData == sent.PixelData


def test_storescp_writes_unknown_sop_class(storescp: StoreSCP) -> None:
    sent = load_sample_with_unknown_sop_class()

    status = send_c_store(storescp.port, storescp.ae_title, sent)

    assert status == 0x0000
    received = storescp.received()
    assert len(received) == 1
    assert received[0].name.endswith(f".{sent.SOPInstanceUID}.dcm")

    stored = pydicom.dcmread(received[0])
    assert stored.SOPClassUID == sent.SOPClassUID
    assert stored.file_meta.TransferSyntaxUID == JPEG_2000_LOSSLESS


def test_storescp_stop_ends_process(tmp_path: Path) -> None:
    peer = StoreSCP(tmp_path / "storescp", "STORESCP").start()
    process = peer.process
    assert process is not None

    peer.stop()

    assert process.poll() is not None
    assert peer.process is None
    peer.stop()


def test_storescp_start_fails_on_used_port(tmp_path: Path) -> None:
    peer = StoreSCP(tmp_path / "storescp", "STORESCP")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupant:
        occupant.bind((HOST, peer.port))

        with pytest.raises(PeerStartError, match="exited with code") as error:
            peer.start()

    assert "storescp.log" in str(error.value)
    assert "Address already in use" in str(error.value)
    assert peer.process is None
