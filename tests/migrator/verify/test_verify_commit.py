"""Storage Commitment with a pynetdicom SCP that reports on the request's own association.

Orthanc reports on an association of its own (tests/e2e/test_verify_orthanc.py);
this SCP sends the N-EVENT-REPORT on the association that carried the N-ACTION.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    StudyRootQueryRetrieveInformationModelFind,
)

from migrator.config import DestinationConfig
from migrator.errors import DestinationError
from migrator.verify import CommitTracker
from migrator.verify.query import FindClient
from tests.peers import free_port

CT = "1.2.840.10008.5.1.4.1.1.2"
#: The instances the SCP stores; it reports any other one as "no such object instance".
STORED = {"1.2.3.1", "1.2.3.2"}


def _on_action(event: evt.Event) -> tuple[int, Dataset | None]:
    request = event.action_information
    report = Dataset()
    report.TransactionUID = request.TransactionUID
    report.ReferencedSOPSequence = []
    report.FailedSOPSequence = []
    for item in request.ReferencedSOPSequence:
        reference = Dataset()
        reference.ReferencedSOPClassUID = item.ReferencedSOPClassUID
        reference.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
        if item.ReferencedSOPInstanceUID in STORED:
            report.ReferencedSOPSequence.append(reference)
        else:
            reference.FailureReason = 0x0112
            report.FailedSOPSequence.append(reference)
    event_type = 2 if report.FailedSOPSequence else 1
    # pynetdicom pauses the acceptor's reactor while a handler runs, so the
    # SCP may send its own request here, before the N-ACTION response.
    event.assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel,
                                    StorageCommitmentPushModelInstance)
    return 0x0000, None


def _on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
    yield 0x0000, None


@pytest.fixture
def commitment_scp() -> Iterator[DestinationConfig]:
    ae = AE(ae_title="COMMITSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_N_ACTION, _on_action), (evt.EVT_C_FIND, _on_find)])
    try:
        yield DestinationConfig(ae_title="COMMITSCP", host="127.0.0.1", port=port, acse_timeout=5,
                                dimse_timeout=5)
    finally:
        server.shutdown()


def test_report_on_request_association(commitment_scp: DestinationConfig) -> None:
    tracker = CommitTracker()
    with FindClient("MIGRATOR", "main", commitment_scp, tracker.handlers) as client:
        tracker.request(client, "main", [(CT, "1.2.3.1", "1.2"), (CT, "1.2.3.2", "1.2"), (CT, "1.2.3.9", "1.2")])
        [transaction] = tracker.wait("main", timeout=10)
    assert transaction.reported
    assert transaction.committed == {"1.2.3.1", "1.2.3.2"}
    assert transaction.failed == {"1.2.3.9": "Failure Reason 0x0112 (no such object instance)"}
    assert transaction.on_request_association


def test_wait_returns_unreported_after_timeout() -> None:
    tracker = CommitTracker()
    assert tracker.wait("main", timeout=0.1) == []


def test_destination_without_commitment_rejected(commitment_scp: DestinationConfig) -> None:
    """Commitment requested on an association that did not propose it raises DestinationError."""
    tracker = CommitTracker()
    with FindClient("MIGRATOR", "main", commitment_scp) as client:
        with pytest.raises(DestinationError, match="does not accept the Storage Commitment"):
            tracker.request(client, "main", [(CT, "1.2.3.1", "1.2")])
