"""Every SCP the migrator runs accepts associations only from the calling AE titles it was given."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from migrator.demo.scp import StorageSCP
from migrator.verify.commit import (
    ALL_COMMITTED,
    CommitListener,
    CommitTracker,
    Transaction,
)
from tests.peers import HOST, PEER_ENVIRONMENT, free_port

LISTENER_AE = "MIGRATOR"
DESTINATION_AE = "NEWPACS"
#: What DCMTK 3.6.7's echoscu prints for an A-ASSOCIATE-RJ with reason 3 from the service user.
DCMTK_REJECTED = "F: Association Rejected:\nF: Result: Rejected Permanent, Source: Service User\n" \
                 "F: Reason: Calling AE Title Not Recognized\n"


def _echoscu(calling_ae: str, called_ae: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "--aetitle", calling_ae, "--call", called_ae, "--timeout", "5",
                           "--acse-timeout", "5", "--dimse-timeout", "5", HOST, str(port)],
                          env={**os.environ, **PEER_ENVIRONMENT}, capture_output=True, text=True, timeout=30)


def test_storage_scp_rejects_unknown_caller(tmp_path: Path) -> None:
    """The demo storage SCP accepts MIGRATOR's C-ECHO and rejects INTRUDER's association."""
    with StorageSCP("MAIN", tmp_path / "main", ["MIGRATOR"]) as scp:
        known = _echoscu("MIGRATOR", "MAIN", scp.port)
        other = _echoscu("INTRUDER", "MAIN", scp.port)
    assert known.returncode == 0, known.stdout + known.stderr
    assert other.returncode != 0
    assert other.stderr == DCMTK_REJECTED
    assert scp.arrivals == []


def test_storage_scp_needs_callers(tmp_path: Path) -> None:
    """An empty list of calling AE titles, which pynetdicom takes as any caller, raises ValueError."""
    with pytest.raises(ValueError, match="needs at least one calling AE title"):
        StorageSCP("MAIN", tmp_path / "main", [])


#: A running listener, its tracker and its port.
Listening = tuple[CommitListener, CommitTracker, int]


@pytest.fixture
def listener() -> Iterator[Listening]:
    tracker = CommitTracker()
    port = free_port()
    with CommitListener(LISTENER_AE, HOST, port, [DESTINATION_AE], tracker) as running:
        yield running, tracker, port


def _report(calling_ae: str, called_ae: str, port: int, transaction_uid: str, sop_instance_uid: str) -> bool:
    """Send an N-EVENT-REPORT (all committed) with pynetdicom; tell whether the association was established."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(HOST, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    info = Dataset()
    info.TransactionUID = transaction_uid
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = sop_instance_uid
    info.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_event_report(info, ALL_COMMITTED, StorageCommitmentPushModel,
                                          StorageCommitmentPushModelInstance)
    assoc.release()
    assert status.Status == 0x0000
    return True


def test_commit_listener_accepts_destination(listener: Listening) -> None:
    """A report from the destination's AE title reaches the tracker."""
    _, tracker, port = listener
    transaction = Transaction("1.2.3.4.100", "main", {"1.2.3.4.101": "1.2.3.4.102"})
    tracker.transactions[transaction.uid] = transaction
    assert _report(DESTINATION_AE, LISTENER_AE, port, transaction.uid, "1.2.3.4.101")
    assert tracker.wait("main", 5) == [transaction]
    assert transaction.reported
    assert transaction.committed == {"1.2.3.4.101"}


@pytest.mark.parametrize(("calling_ae", "called_ae", "reason"), [
    ("INTRUDER", LISTENER_AE, "Calling AE title not recognised"),
    (DESTINATION_AE, "SOMEONE", "Called AE title not recognised"),
])
def test_commit_listener_rejects_unknown_association(listener: Listening, caplog: pytest.LogCaptureFixture,
                                                     calling_ae: str, called_ae: str, reason: str) -> None:
    """A report from another calling AE title, or to another called AE title, is rejected unread."""
    _, tracker, port = listener
    transaction = Transaction("1.2.3.4.200", "main", {"1.2.3.4.201": "1.2.3.4.202"})
    tracker.transactions[transaction.uid] = transaction
    with caplog.at_level(logging.ERROR, logger="pynetdicom"):
        assert not _report(calling_ae, called_ae, port, transaction.uid, "1.2.3.4.201")
    assert "Association Rejected" in caplog.messages
    assert f"Reason: {reason}" in caplog.messages
    assert not transaction.reported


def test_commit_listener_rejects_echoscu(listener: Listening) -> None:
    """DCMTK's echoscu with an unknown -aet gets an A-ASSOCIATE-RJ for its calling AE title."""
    _, _, port = listener
    result = _echoscu("INTRUDER", LISTENER_AE, port)
    assert result.returncode != 0
    assert result.stderr == DCMTK_REJECTED


def test_commit_listener_needs_peers() -> None:
    """An empty list of destination AE titles raises ValueError."""
    with pytest.raises(ValueError, match="needs the AE titles"):
        CommitListener(LISTENER_AE, HOST, free_port(), [], CommitTracker())
