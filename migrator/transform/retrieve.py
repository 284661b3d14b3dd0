"""Retrieving instances from the legacy PACS by C-MOVE into our own storage SCP.

Each C-MOVE request (Study Root Query/Retrieve Information Model - MOVE,
DICOM PS3.4) requests a list of SOP Instance UIDs at IMAGE level, with the
SCP's AE title as the Move Destination. The legacy PACS opens an
association of its own to that SCP and sends each instance as a C-STORE
sub-operation. What counts is what arrived: a final status of success
does not prove that every listed instance was sent, and a PACS that does
not store a UID may skip it without a failure. Each UID of a batch that
did not arrive is moved again alone, so its own final status names the
reason.

NOTE: the identifier carries only the SOP Instance UIDs, as relational
retrieve allows. A legacy PACS that demands the Study and Series Instance
UIDs of a hierarchical retrieve rejects these requests, and such a PACS
would need a C-FIND for them first.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove as STUDY_ROOT_MOVE,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from migrator.config import DestinationConfig, TransformConfig
from migrator.dicom.net import NODELAY_HANDLERS
from migrator.dicom.send import association_failure
from migrator.errors import MigratorError

LOGGER = logging.getLogger(__name__)

#: The C-MOVE status of a pending response, sent while sub-operations remain.
PENDING = (0xFF00,)
#: C-STORE statuses our SCP returns.
STORED = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
#: A received SOP Instance UID names a file, so it must be digits and dots.
_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MAX_UID_LENGTH = 128
_MOVE_STATUSES = {
    0x0000: "success",
    0xB000: "sub-operations complete, one or more failures",
    0xA701: "refused: out of resources, unable to calculate the number of matches",
    0xA702: "refused: out of resources, unable to perform sub-operations",
    0xA801: "refused: Move Destination unknown",
    0xA900: "identifier does not match SOP class",
    0xFE00: "sub-operations terminated due to cancel",
}


class RetrieveError(MigratorError):
    """Our storage SCP cannot listen, or the legacy PACS cannot be reached for C-MOVE."""


def describe_move_status(status: int) -> str:
    meaning = _MOVE_STATUSES.get(status)
    if meaning is None:
        meaning = "unable to process" if status & 0xF000 == 0xC000 else "failure"
    return f"C-MOVE status 0x{status:04X} ({meaning})"


class ReceivingSCP:
    """The storage SCP that the legacy PACS sends the C-MOVE sub-operations to.

    It listens on ``host`` (127.0.0.1 unless configured), accepts
    associations only from ``allowed_callers`` and only when called by its
    own AE title, and writes each instance to ``folder`` as
    ``<SOP Instance UID>.dcm``, as received.
    """

    def __init__(self, ae_title: str, host: str, port: int, allowed_callers: Sequence[str], folder: Path) -> None:
        self.ae_title = ae_title
        self.address = (host, port)
        self.folder = folder
        self._arrived: dict[str, Path] = {}
        self._changed = threading.Condition()
        self._ae = AE(ae_title=ae_title)
        self._ae.require_called_aet = True
        self._ae.require_calling_aet = list(allowed_callers)
        self._ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer | None = None

    def __enter__(self) -> ReceivingSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        host, port = self.address
        try:
            self._server = self._ae.start_server(
                self.address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store), *NODELAY_HANDLERS])
        except OSError as exc:
            raise RetrieveError(f"our storage SCP cannot listen on {host}:{port}: {exc.strerror or exc}; "
                                "choose another transform.scp_port, and configure it for our AE title in "
                                "the legacy PACS") from None
        LOGGER.info("storage SCP %s listening on %s:%d for C-MOVE sub-operations", self.ae_title, host, port)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def forget(self, uids: Iterable[str]) -> None:
        """Stop counting earlier arrivals of ``uids``, before they are moved again."""
        with self._changed:
            for uid in uids:
                self._arrived.pop(uid, None)

    def arrived(self, uid: str) -> Path | None:
        with self._changed:
            return self._arrived.get(uid)

    def wait_for(self, uids: Iterable[str], timeout: float) -> None:
        """Wait up to ``timeout`` seconds until every one of ``uids`` has arrived."""
        wanted = set(uids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not wanted <= self._arrived.keys() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        uid = str(request.AffectedSOPInstanceUID or "")
        caller = event.assoc.requestor.ae_title
        if not _SAFE_UID.match(uid) or len(uid) > _MAX_UID_LENGTH:
            LOGGER.warning("C-STORE from %s rejected: its SOP Instance UID is not a valid UID", caller)
            return CANNOT_UNDERSTAND
        path = self.folder / f"{uid}.dcm"
        partial = path.with_suffix(".part")
        try:
            partial.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(partial, path)
        except OSError as exc:
            LOGGER.error("cannot write the instance received from %s to %s: %s", caller, self.folder,
                         exc.strerror or exc)
            return OUT_OF_RESOURCES
        with self._changed:
            self._arrived[uid] = path
            self._changed.notify_all()
        return STORED


@dataclass
class MoveResult:
    """The received and the missing instances of one C-MOVE request."""

    #: SOP Instance UID -> the received file.
    received: dict[str, Path] = field(default_factory=dict)
    #: SOP Instance UID -> why it did not arrive.
    missing: dict[str, str] = field(default_factory=dict)


@dataclass
class _Response:
    """The final C-MOVE response, or why there was none."""

    status: int | None = None
    error: str | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: set[str] = field(default_factory=set)


def _count(status: Dataset, keyword: str) -> int:
    value = status.get(keyword)
    try:
        return int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


class LegacyPacs:
    """The association to the legacy PACS for C-MOVE, opened again when it drops. Use as a context manager."""

    def __init__(self, calling_ae: str, config: TransformConfig, scp: ReceivingSCP) -> None:
        # TransformConfig sets the legacy PACS completely or not at all, and the caller checked that it is set.
        assert config.legacy_ae_title is not None
        assert config.legacy_host is not None
        assert config.legacy_port is not None
        self.config = config
        self.scp = scp
        # association_failure() describes a failed association to any SCP;
        # the legacy PACS takes the place of a destination there.
        self._peer = DestinationConfig(ae_title=config.legacy_ae_title, host=config.legacy_host,
                                       port=config.legacy_port, acse_timeout=config.acse_timeout,
                                       dimse_timeout=config.dimse_timeout)
        self.name = f"legacy PACS {config.legacy_ae_title}@{config.legacy_host}:{config.legacy_port}"
        self._ae = AE(ae_title=calling_ae)
        self._ae.acse_timeout = config.acse_timeout
        self._ae.dimse_timeout = config.dimse_timeout
        self._ae.network_timeout = config.dimse_timeout
        self._ae.add_requested_context(STUDY_ROOT_MOVE)
        self._assoc: Association | None = None

    def __enter__(self) -> LegacyPacs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _association(self) -> Association:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        assoc = self._ae.associate(self._peer.host, self._peer.port, ae_title=self._peer.ae_title,
                                   evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                raise RetrieveError(f"{self.name} does not support C-MOVE in the Study Root Query/Retrieve "
                                    "Information Model")
            raise RetrieveError(f"{self.name} {association_failure(assoc, self._ae.ae_title, self._peer)}")
        self._assoc = assoc
        return assoc

    def move(self, uids: Sequence[str]) -> MoveResult:
        """Move ``uids`` to our SCP; a UID of a batch that does not arrive is moved again alone.

        When the association cannot be opened, no UID is moved alone, because
        each attempt would wait for the same failure.
        """
        result, answered = self._move_once(uids)
        if len(uids) > 1 and result.missing and answered:
            LOGGER.info("%d of %d instance(s) did not arrive from %s; moving each of them alone",
                        len(result.missing), len(uids), self.name)
            retried = list(result.missing)
            for uid in retried:
                alone, _ = self._move_once([uid])
                if uid in alone.received:
                    result.received[uid] = alone.received[uid]
                    del result.missing[uid]
                else:
                    result.missing[uid] = alone.missing[uid]
        return result

    def _move_once(self, uids: Sequence[str]) -> tuple[MoveResult, bool]:
        """Send one C-MOVE request; return its result and whether the association was opened."""
        self.scp.forget(uids)
        try:
            response = self._send(uids)
        except RetrieveError as exc:
            return MoveResult(missing={uid: str(exc) for uid in uids}), False
        missing = [uid for uid in uids if self.scp.arrived(uid) is None]
        if missing and response.completed + response.warning > len(uids) - len(missing):
            # The final response counts more completed sub-operations than have
            # arrived; the last C-STOREs may still be in flight.
            self.scp.wait_for(missing, self.config.arrival_wait)
        result = MoveResult()
        for uid in uids:
            path = self.scp.arrived(uid)
            if path is not None:
                result.received[uid] = path
            else:
                result.missing[uid] = self._why_missing(uid, uids, response)
        return result, True

    def _send(self, uids: Sequence[str]) -> _Response:
        assoc = self._association()
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = list(uids) if len(uids) > 1 else uids[0]
        response = _Response()
        for status, data in assoc.send_c_move(identifier, self.scp.ae_title, STUDY_ROOT_MOVE):
            if "Status" not in status:
                # pynetdicom yields an empty status when no response arrived.
                response.error = ("no C-MOVE response within transform.dimse_timeout"
                                  if assoc.is_established else "the association was aborted")
                if assoc.is_established:
                    assoc.abort()
                return response
            code = int(status.Status)
            response.completed = _count(status, "NumberOfCompletedSuboperations")
            response.failed = _count(status, "NumberOfFailedSuboperations")
            response.warning = _count(status, "NumberOfWarningSuboperations")
            if code in PENDING:
                continue
            response.status = code
            if data is not None and "FailedSOPInstanceUIDList" in data:
                listed = data.FailedSOPInstanceUIDList
                response.failed_uids = {str(uid) for uid in ([listed] if isinstance(listed, str) else listed)}
            return response
        response.error = "the C-MOVE ended without a final status"
        return response

    def _why_missing(self, uid: str, uids: Sequence[str], response: _Response) -> str:
        who = self.name
        if response.error is not None:
            return f"not received from {who}: {response.error}"
        assert response.status is not None
        status = describe_move_status(response.status)
        if uid in response.failed_uids:
            return (f"not received: {who} listed it as a failed sub-operation ({status}); its log "
                    f"names why the C-STORE to {self.scp.ae_title} failed")
        if len(uids) == 1 and response.status != 0x0000:
            return f"not received: {who} ended the C-MOVE with {status}; it may not store this instance"
        return (f"not received: {who} ended the C-MOVE with {status} after {response.completed} completed "
                f"and {response.failed} failed sub-operation(s) for {len(uids)} requested instance(s); it "
                "may not store this instance")
