"""Storage Commitment Push Model (DICOM PS3.4): ask a destination to commit to the instances.

Each N-ACTION (Action Type ID 1, Request Storage Commitment) lists
instances by SOP Class and SOP Instance UID under a new Transaction UID.
The destination returns an N-ACTION response at once and later sends
an N-EVENT-REPORT (Event Type ID 1: all committed, 2: failures exist) that
names the instances it committed and those it did not. It may send the
report on the association of the request, which therefore offers the SCP
role, or on a separate association that it opens to the requester.
Orthanc 1.10 always opens a separate association, to the host and port
configured for the requester's AE title in its ``DicomModalities``, so the
report can only reach us when we listen for it (:class:`CommitListener`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from pynetdicom.transport import ThreadedAssociationServer

from migrator.dicom.net import NODELAY_HANDLERS
from migrator.errors import DestinationError
from migrator.verify.query import FindClient

LOGGER = logging.getLogger(__name__)

#: N-ACTION Action Type ID: Request Storage Commitment.
REQUEST_COMMITMENT = 1
#: N-EVENT-REPORT Event Type IDs.
ALL_COMMITTED = 1
FAILURES_EXIST = 2
#: (0008,1197) Failure Reason values defined in DICOM PS3.3.
FAILURE_REASONS = {0x0110: "processing failure", 0x0112: "no such object instance",
                   0x0213: "resource limitation", 0x0122: "referenced SOP class not supported",
                   0x0119: "class / instance conflict", 0x0131: "duplicate transaction UID"}


def describe_failure_reason(code: int | None) -> str:
    if code is None:
        return "no Failure Reason given"
    return f"Failure Reason 0x{code:04X} ({FAILURE_REASONS.get(code, 'unknown')})"


@dataclass
class Transaction:
    """One storage commitment request and, once it arrives, its report."""

    #: The Transaction UID.
    uid: str
    #: The name of the destination, or group of destinations, that :meth:`CommitTracker.wait` gets it by.
    destination: str
    #: SOP Instance UID -> Study Instance UID, for the report rows.
    studies: dict[str, str]
    sent_at: float = field(default_factory=time.monotonic)
    reported: bool = False
    #: True when the report came on the association that carried the N-ACTION.
    on_request_association: bool = False
    committed: set[str] = field(default_factory=set)
    #: SOP Instance UID -> why the destination did not commit to it.
    failed: dict[str, str] = field(default_factory=dict)


class CommitTracker:
    """The transactions sent to every destination, filled in as reports arrive.

    Its :attr:`handlers` go on every association that may carry a report:
    the requesting associations and the :class:`CommitListener`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.transactions: dict[str, Transaction] = {}

    @property
    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_N_EVENT_REPORT, self._on_report)]

    def request(self, client: FindClient, target: str, instances: Sequence[tuple[str, str, str]]) -> Transaction:
        """Send one N-ACTION for ``instances``, (SOP Class UID, SOP Instance UID, Study Instance UID).

        ``target`` is the name that :meth:`wait` gets the transaction by.

        Raises
        ------
        DestinationError
            The destination does not support the Storage Commitment Push
            Model, the association failed, or the N-ACTION failed.
        """
        assoc = client.association
        if not client.supports(StorageCommitmentPushModel):
            raise DestinationError(f"destination {client.name} does not accept the Storage Commitment "
                                   "Push Model SOP Class; run verify without --commit", transient=False)
        # NOTE: every instance of a chunk of studies goes in one request; a
        # destination that limits the items per N-ACTION would need smaller chunks.
        transaction = Transaction(generate_uid(), target,
                                  {sop_instance: study for _, sop_instance, study in instances})
        action = Dataset()
        action.TransactionUID = transaction.uid
        action.ReferencedSOPSequence = []
        for sop_class, sop_instance, _ in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            action.ReferencedSOPSequence.append(item)
        with self._lock:
            self.transactions[transaction.uid] = transaction
        status, _ = assoc.send_n_action(action, REQUEST_COMMITMENT, StorageCommitmentPushModel,
                                        StorageCommitmentPushModelInstance)
        code = int(status.Status) if "Status" in status else None
        if code != 0x0000:
            with self._lock:
                del self.transactions[transaction.uid]
            result = "no response" if code is None else f"status 0x{code:04X}"
            raise DestinationError(f"Storage Commitment N-ACTION to destination {client.name} failed: {result}")
        return transaction

    def _on_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        requested_here = event.assoc.is_requestor
        peer = (event.assoc.acceptor if requested_here else event.assoc.requestor).ae_title
        try:
            info = event.event_information
            transaction_uid = str(info.TransactionUID)
            committed = {str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence", [])}
            failed = {str(item.ReferencedSOPInstanceUID): describe_failure_reason(item.get("FailureReason"))
                      for item in info.get("FailedSOPSequence", [])}
        except (AttributeError, KeyError, ValueError) as exc:
            LOGGER.warning("invalid Storage Commitment N-EVENT-REPORT from %s: %s", peer, exc)
            return 0x0110, None
        with self._lock:
            transaction = self.transactions.get(transaction_uid)
            if transaction is None:
                LOGGER.warning("Storage Commitment N-EVENT-REPORT for an unknown transaction from %s",
                               peer)
                return 0x0000, None
            transaction.reported = True
            transaction.on_request_association = requested_here
            transaction.committed |= committed
            transaction.failed.update(failed)
            self._changed.notify_all()
        LOGGER.info("Storage Commitment report from %s: %d committed, %d failed",
                    transaction.destination, len(committed), len(failed))
        return 0x0000, None

    def wait(self, destination: str, timeout: float) -> list[Transaction]:
        """Wait up to ``timeout`` seconds after the last request for every report of ``destination``.

        Returns the transactions of ``destination``, reported or not.
        """
        with self._lock:
            transactions = [t for t in self.transactions.values() if t.destination == destination]
            if transactions:
                deadline = max(t.sent_at for t in transactions) + timeout
                while not all(t.reported for t in transactions) and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
            return transactions


class CommitListener:
    """An SCP that receives the N-EVENT-REPORTs a destination sends on an association of its own.

    It accepts associations only from ``peer_ae_titles``, only when they
    call ``ae_title``, and only for the Storage Commitment Push Model. It
    listens without TLS.

    Raises
    ------
    ValueError
        ``peer_ae_titles`` is empty, which pynetdicom would take as "accept any caller".
    """

    def __init__(self, ae_title: str, host: str, port: int, peer_ae_titles: Sequence[str],
                 tracker: CommitTracker) -> None:
        if not peer_ae_titles:
            raise ValueError("the Storage Commitment listener needs the AE titles of the "
                             "destinations that may send reports")
        self._ae = AE(ae_title=ae_title)
        self._ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self._ae.require_called_aet = True
        self._ae.require_calling_aet = list(peer_ae_titles)
        self._address = (host, port)
        self._tracker = tracker
        self._server: ThreadedAssociationServer | None = None

    def __enter__(self) -> CommitListener:
        try:
            self._server = self._ae.start_server(
                self._address, block=False, evt_handlers=[*NODELAY_HANDLERS, *self._tracker.handlers])
        except OSError as exc:
            host, port = self._address
            raise DestinationError(f"cannot listen for Storage Commitment reports on {host}:{port}: "
                                   f"{exc.strerror or exc}; choose another --commit-listen address",
                                   transient=False) from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
