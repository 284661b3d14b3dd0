"""C-STORE to a destination over one association per batch.

The association proposes exactly the (SOP Class, transfer syntax) pairs of
the batch, each pair in a presentation context of its own. So every
instance travels in its stored transfer syntax and nothing is decompressed
(PS3.7 D.3.2 lets an SCU propose one transfer syntax per context).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from migrator.config import DestinationConfig
from migrator.dicom.breaker import CircuitBreaker
from migrator.dicom.limit import AssociationLimiter
from migrator.dicom.net import NODELAY_HANDLERS
from migrator.errors import DestinationError

LOGGER = logging.getLogger(__name__)

#: PS3.8 9.3.2.2 allows at most 128 presentation contexts per association.
MAX_CONTEXTS = 128
#: C-STOREs in a row without a response before the rest of a batch's
#: instances for that destination fail at once instead of each waiting
#: for the DIMSE timeout.
MAX_SILENT_STORES = 3

ContextKey = tuple[str, str]


@dataclass(frozen=True)
class StoreResult:
    """The result of one C-STORE request."""

    #: "success", "warning" or "failure".
    category: str
    #: The (0000,0900) Status, or None when no response arrived.
    status: int | None
    #: The failure reason or the warning's meaning; None on success.
    detail: str | None
    #: True for a failure that a later attempt may not meet: no response,
    #: or 0xA7xx (out of resources).
    transient: bool = False


def _describe(status: int) -> str:
    return f"C-STORE status 0x{status:04X} ({code_to_category(status)})"


class StoreSession:
    """One association to one destination, reused for a whole batch.

    Use as a context manager. When the association drops in the middle of a
    batch, the next :meth:`store` opens a new one. If that fails too, it
    raises :class:`DestinationError`, and the caller fails the rest.
    """

    def __init__(self, calling_ae: str, name: str, destination: DestinationConfig,
                 pairs: Iterable[ContextKey], limiter: AssociationLimiter | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.name = name
        self._breaker = breaker
        self._limiter = limiter if destination.max_associations else None
        self._slot: str | None = None
        self._slot_renewed = 0.0
        self.destination = destination
        self.pairs = sorted(set(pairs))
        if len(self.pairs) > MAX_CONTEXTS:
            raise ValueError(f"{len(self.pairs)} presentation contexts requested, at most {MAX_CONTEXTS}")
        self._ae = AE(ae_title=calling_ae)
        self._ae.acse_timeout = destination.acse_timeout
        self._ae.dimse_timeout = destination.dimse_timeout
        self._ae.network_timeout = destination.dimse_timeout
        self._assoc: Association | None = None
        self._silent = 0

    def __enter__(self) -> StoreSession:
        try:
            self._associate()
        except BaseException:
            self.close()  # gives back the association slot
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
        if self._limiter is not None and self._slot is not None:
            self._limiter.release(self.name, self._slot)
            self._slot = None

    def _hold_slot(self) -> None:
        # One slot covers this session's associations, re-associations included.
        if self._limiter is None:
            return
        limit = self.destination.max_associations or 0
        if self._slot is None:
            self._slot = self._limiter.acquire(self.name, limit, self.destination.association_wait)
            self._slot_renewed = time.monotonic()
        elif time.monotonic() - self._slot_renewed > 30:
            self._limiter.renew(self.name, self._slot)
            self._slot_renewed = time.monotonic()

    def _associate(self) -> None:
        if self._breaker is not None:
            self._breaker.check(self.name)
        self._hold_slot()
        dest = self.destination
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in self.pairs]
        assoc = self._ae.associate(
            dest.host, dest.port, contexts=contexts, ae_title=dest.ae_title,
            max_pdu=dest.max_pdu, evt_handlers=NODELAY_HANDLERS,
        )
        if not assoc.is_established:
            if self._breaker is not None:
                self._breaker.record_failure(self.name, dest.circuit_breaker_failures,
                                             dest.circuit_breaker_seconds)
            raise DestinationError(
                f"destination {self.name} ({dest.ae_title}@{dest.host}:{dest.port}) "
                f"{association_failure(assoc, self._ae.ae_title, dest)}",
                transient=not _no_context_accepted(assoc))
        if self._breaker is not None:
            self._breaker.record_success(self.name)
        self._assoc = assoc
        LOGGER.debug("associated with %s: %d contexts proposed, %d accepted", self.name,
                      len(contexts), len(assoc.accepted_contexts))

    def accepts(self, sop_class: str, syntax: str) -> bool:
        """Tell whether the current association accepted this pair."""
        if self._assoc is None:
            return False
        return any(cx.abstract_syntax == sop_class and syntax in cx.transfer_syntax
                   for cx in self._assoc.accepted_contexts)

    def store(self, ds: Dataset, sop_class: str, syntax: str) -> StoreResult:
        """Send one dataset and classify the response.

        Raises
        ------
        DestinationError
            The association dropped and a new one could not be opened.
        """
        if self._silent >= MAX_SILENT_STORES:
            raise DestinationError(
                f"destination {self.name} sent no response to {self._silent} C-STORE requests in a "
                "row; the rest of its instances in this batch were not sent")
        if self._assoc is None or not self._assoc.is_established:
            LOGGER.warning("association with %s was lost; opening a new one", self.name)
            self._associate()
        if not self.accepts(sop_class, syntax):
            return StoreResult("failure", None,
                               f"destination {self.name} did not accept the presentation context "
                               f"{sop_class} with transfer syntax {syntax}")
        assert self._assoc is not None
        self._hold_slot()
        started = time.monotonic()
        try:
            response = self._assoc.send_c_store(ds)
        except (ValueError, AttributeError) as exc:
            return StoreResult("failure", None, f"cannot encode the data set: {exc}")
        status = response.get("Status")
        if status is None:
            self._silent += 1
            if time.monotonic() - started >= self.destination.dimse_timeout:
                why = f"timed out after {self.destination.dimse_timeout:g} s (dimse_timeout)"
            elif self._assoc.is_aborted or not self._assoc.is_established:
                why = "the association was aborted"
            else:
                why = "the response was invalid"
            self._assoc.abort()
            return StoreResult("failure", None, f"no C-STORE response from {self.name}: {why}",
                               transient=True)
        self._silent = 0
        status = int(status)
        category = code_to_category(status)
        if category == "Success":
            return StoreResult("success", status, None)
        if category == "Warning":
            return StoreResult("warning", status, _describe(status))
        comment = response.get("ErrorComment")
        detail = _describe(status) + (f": {comment}" if comment else "")
        return StoreResult("failure", status, detail, transient=is_out_of_resources(status))


def is_out_of_resources(status: int) -> bool:
    """Tell whether a C-STORE status is 0xA7xx, Refused: Out of Resources (PS3.4 B.2.3)."""
    return status & 0xFF00 == 0xA700


def _no_context_accepted(assoc: Association) -> bool:
    return bool(assoc.rejected_contexts) and not assoc.accepted_contexts


def association_failure(assoc: Association, calling_ae: str, destination: DestinationConfig) -> str:
    """Describe why an association was not established, and what to check."""
    if assoc.is_rejected:
        return (f"rejected the association; check that it accepts calling AE title {calling_ae} "
                f"and that its own AE title is {destination.ae_title}")
    if _no_context_accepted(assoc):
        # pynetdicom aborts an association in which no presentation context was accepted.
        syntaxes = sorted({str(syntax) for cx in assoc.rejected_contexts for syntax in cx.transfer_syntax})
        return ("accepted none of the proposed presentation contexts, so it takes none of the "
                f"transfer syntaxes {', '.join(syntaxes)} for these SOP classes")
    # pynetdicom reports a refused or timed-out connection as an abort, so
    # probe the port to tell a stopped service from a dropped association.
    try:
        with socket.create_connection((destination.host, destination.port),
                                      timeout=min(destination.acse_timeout, 10)):
            pass
    except ConnectionRefusedError:
        return "refused the connection: nothing is listening on that port; is the service running?"
    except TimeoutError:
        return "did not accept a TCP connection in time; check the host, port and firewall"
    except OSError as exc:
        return f"cannot be reached: {exc.strerror or exc}; check the host and port"
    return "aborted the association request; check its log for the reason"


def echo(calling_ae: str, name: str, destination: DestinationConfig) -> None:
    """Send a C-ECHO to ``destination``.

    Raises
    ------
    DestinationError
        The association failed or the C-ECHO did not return success.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = destination.acse_timeout
    ae.dimse_timeout = destination.dimse_timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=NODELAY_HANDLERS)
    if not assoc.is_established:
        raise DestinationError(
            f"destination {name} ({destination.ae_title}@{destination.host}:{destination.port}) "
            f"{association_failure(assoc, calling_ae, destination)}")
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = response.get("Status")
    if status is None or int(status) != 0:
        shown = "no response" if status is None else f"status 0x{int(status):04X}"
        raise DestinationError(f"C-ECHO to destination {name} failed: {shown}")
