"""Our storage SCP for C-MOVE sub-operations (who may call it, what it writes, TCP_NODELAY), and an unreachable legacy PACS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from migrator.config import TransformConfig
from migrator.transform.retrieve import LegacyPacs, ReceivingSCP, RetrieveError
from tests.peers import free_port
from tests.transform.support import sample


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[ReceivingSCP]:
    with ReceivingSCP("MIGRATORSCP", "127.0.0.1", free_port(), ["OLDPACS"], tmp_path / "received") as running:
        yield running


def _associate(scp: ReceivingSCP, calling: str, called: str = "MIGRATORSCP") -> Association:
    ae = AE(ae_title=calling)
    ae.requested_contexts = [build_context(MRImageStorage, [JPEG2000Lossless]),
                             build_context(MRImageStorage, [ExplicitVRLittleEndian]), build_context(Verification)]
    host, port = scp.address
    return ae.associate(host, port, ae_title=called)


def test_unknown_calling_ae_rejected(scp: ReceivingSCP) -> None:
    assoc = _associate(scp, "STRANGER")
    assert assoc.is_rejected


def test_wrong_called_ae_rejected(scp: ReceivingSCP) -> None:
    assoc = _associate(scp, "OLDPACS", called="SOMEONE")
    assert assoc.is_rejected


def test_store_written_and_counted_with_nodelay(scp: ReceivingSCP) -> None:
    ds = pydicom.dcmread(sample("MR_small_jp2klossless.dcm"))
    assoc = _associate(scp, "OLDPACS")
    assert assoc.is_established
    try:
        # The SCP's side of the association, as its server thread holds it.
        server = scp._server
        assert server is not None
        accepted = server.active_associations[0].dul.socket
        assert accepted is not None and accepted.socket is not None
        assert accepted.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    path = scp.arrived(str(ds.SOPInstanceUID))
    assert path == scp.folder / f"{ds.SOPInstanceUID}.dcm"
    received = pydicom.dcmread(path)
    assert received.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert received.PixelData == ds.PixelData


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uid_that_is_no_file_name_rejected(scp: ReceivingSCP) -> None:
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    ds.SOPInstanceUID = "1.2.3/../../4"
    assoc = _associate(scp, "OLDPACS")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xC000
    assert list(scp.folder.iterdir()) == []


def test_bound_to_configured_host_only(tmp_path: Path) -> None:
    port = free_port()
    with ReceivingSCP("MIGRATORSCP", "127.0.0.1", port, ["OLDPACS"], tmp_path / "received") as running:
        assert running._server is not None
        assert running._server.server_address == ("127.0.0.1", port)
        with pytest.raises(RetrieveError, match=f"cannot listen on 127.0.0.1:{port}"):
            with ReceivingSCP("OTHER", "127.0.0.1", port, ["OLDPACS"], tmp_path / "other"):
                pass


def test_unreachable_legacy_pacs_fails_each_uid(scp: ReceivingSCP) -> None:
    """Nothing listens at the legacy PACS's port: every UID fails with the reason, without moves one by one."""
    config = TransformConfig(legacy_ae_title="OLDPACS", legacy_host="127.0.0.1", legacy_port=free_port(),
                             scp_port=scp.address[1], acse_timeout=5)
    uids = ["1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"]
    with LegacyPacs("MIGRATOR", config, scp) as pacs:
        result = pacs.move(uids)
    assert result.received == {}
    assert sorted(result.missing) == uids
    for reason in result.missing.values():
        assert "refused the connection: nothing is listening on that port" in reason
        assert reason.startswith(f"legacy PACS OLDPACS@127.0.0.1:{config.legacy_port} ")
