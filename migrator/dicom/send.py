"""C-STORE to a destination over one association per batch.

The association proposes exactly the (SOP Class, transfer syntax) pairs of
the batch, each pair in a presentation context of its own. So every
instance travels in its stored transfer syntax and nothing is decompressed
(PS3.7 D.3.2 lets an SCU propose one transfer syntax per context). The one
exception is a destination with ``on_transfer_syntax_rejected = "decompress"``:
for each SOP class stored in a compressed transfer syntax the association
also proposes Explicit VR Little Endian (:func:`with_decompressed_contexts`),
so that one association carries both the files sent as stored and the
decoded copies of those whose stored transfer syntax was not accepted.

Instances are sent from Part 10 files: pynetdicom reads the File Meta
Information and streams the data set that follows it, in P-DATA PDUs of the
maximum length that the destination accepted (its Maximum Length in the
A-ASSOCIATE-AC; the ``max_pdu`` we offer only limits what it sends us).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from migrator.config import DestinationConfig
from migrator.dicom.breaker import CircuitBreaker
from migrator.dicom.limit import AssociationLimiter
from migrator.dicom.net import NODELAY_HANDLERS, client_tls, tls_problem
from migrator.dicom.pacing import pace
from migrator.errors import DestinationError
from migrator.steps import Change

LOGGER = logging.getLogger(__name__)

#: PS3.8 9.3.2.2 allows at most 128 presentation contexts per association.
MAX_CONTEXTS = 128
#: C-STOREs in a row without a response before the rest of a batch's
#: instances for that destination fail at once instead of each waiting
#: for the DIMSE timeout.
MAX_SILENT_STORES = 3

ContextKey = tuple[str, str]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Conversion:
    """A change of transfer syntax made so that a destination would take an instance."""

    old_syntax: str
    new_syntax: str
    #: Why: the destination and the presentation context it did not accept.
    reason: str
    #: True when the stored transfer syntax allows lossy compression, so the
    #: pixels sent may already differ from those first acquired. Decoding
    #: itself changes no stored pixel value.
    lossy_source: bool
    #: Header changes that the new encoding needs, such as (0028,0004)
    #: Photometric Interpretation after JPEG 2000's colour transform.
    changes: tuple[Change, ...] = ()

    def as_dicts(self) -> list[dict[str, Any]]:
        """Return the audit entries: the transfer syntax change first, then the header changes."""
        syntax = {"keyword": "TransferSyntaxUID", "old": self.old_syntax, "new": self.new_syntax,
                  "reason": self.reason, "lossy_source": self.lossy_source}
        return [syntax, *(change.as_dict() for change in self.changes)]


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
    #: True when nothing was sent because the destination did not accept
    #: the presentation context of the instance's SOP class and transfer syntax.
    context_rejected: bool = False
    #: The transfer syntax change made before sending, if any.
    conversion: Conversion | None = None


def _describe(status: int) -> str:
    return f"C-STORE status 0x{status:04X} ({code_to_category(status)})"


def classify_status(status: int, comment: str | None = None) -> StoreResult:
    """Turn a C-STORE response's (0000,0900) Status and Error Comment into a result."""
    category = code_to_category(status)
    if category == "Success":
        return StoreResult("success", status, None)
    if category == "Warning":
        return StoreResult("warning", status, _describe(status))
    detail = _describe(status) + (f": {comment}" if comment else "")
    return StoreResult("failure", status, detail, transient=is_out_of_resources(status))


def not_accepted(name: str, sop_class: str, syntax: str) -> StoreResult:
    """Return the failure of an instance whose presentation context the destination rejected."""
    return StoreResult("failure", None,
                       f"destination {name} did not accept the presentation context "
                       f"{sop_class} with transfer syntax {syntax}", context_rejected=True)


def is_compressed(syntax: str) -> bool:
    """Tell whether ``syntax`` is a standard transfer syntax with encapsulated, compressed Pixel Data."""
    uid = UID(syntax)
    return uid.is_transfer_syntax and uid.is_compressed


def with_decompressed_contexts(pairs: Iterable[ContextKey]) -> set[ContextKey]:
    """Add (SOP class, Explicit VR Little Endian) for every SOP class that ``pairs`` has compressed."""
    pairs = set(pairs)
    return pairs | {(sop_class, EXPLICIT_VR_LITTLE_ENDIAN) for sop_class, syntax in pairs
                    if is_compressed(syntax)}


class ContextsRejected(DestinationError):
    """The destination accepted none of the proposed presentation contexts.

    ``pairs`` are the (SOP Class UID, transfer syntax UID) pairs proposed.
    Trying again cannot help, so the error is not transient.
    """

    def __init__(self, message: str, pairs: Iterable[ContextKey]) -> None:
        super().__init__(message, transient=False)
        self.pairs = frozenset(pairs)


def no_response(name: str, why: str) -> StoreResult:
    """Return the transient failure of a C-STORE request that got no response."""
    return StoreResult("failure", None, f"no C-STORE response from {name}: {why}", transient=True)


def silent_destination(name: str, silent: int) -> DestinationError:
    """Return the error that ends a batch's sending after ``silent`` requests without a response."""
    return DestinationError(
        f"destination {name} sent no response to {silent} C-STORE requests in a "
        "row; the rest of its instances in this batch were not sent")


class DestinationGuard:
    """The association slot (max_associations) and circuit breaker of one sending session.

    Every engine calls :meth:`before_associate` before it opens an
    association, :meth:`associated` or :meth:`association_failed` after,
    :meth:`keep` while it sends, and :meth:`close` at the end.
    """

    def __init__(self, name: str, destination: DestinationConfig,
                 limiter: AssociationLimiter | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.name = name
        self.destination = destination
        self._limiter = limiter if destination.max_associations else None
        self._breaker = breaker
        self._slot: str | None = None
        self._slot_renewed = 0.0

    def try_hold(self) -> bool:
        """Take a free association slot without waiting; tell whether one was free.

        Without a limit there is always a slot.
        """
        if self._limiter is None or self._slot is not None:
            return True
        limit = self.destination.max_associations or 0
        self._slot = self._limiter.try_acquire(self.name, limit)
        self._slot_renewed = time.monotonic()
        return self._slot is not None

    def keep(self) -> None:
        """Take a slot, waiting up to association_wait, or renew the one held.

        One slot covers this session's associations, re-associations included.

        Raises
        ------
        DestinationError
            No slot became free within association_wait.
        """
        if self._limiter is None:
            return
        if self._slot is None:
            limit = self.destination.max_associations or 0
            self._slot = self._limiter.acquire(self.name, limit, self.destination.association_wait)
            self._slot_renewed = time.monotonic()
        elif time.monotonic() - self._slot_renewed > 30:
            self._limiter.renew(self.name, self._slot)
            self._slot_renewed = time.monotonic()

    def before_associate(self) -> None:
        """Raise DestinationError while the circuit is open, then hold a slot."""
        if self._breaker is not None:
            self._breaker.check(self.name)
        self.keep()

    def associated(self) -> None:
        if self._breaker is not None:
            self._breaker.record_success(self.name)

    def association_failed(self) -> None:
        if self._breaker is not None:
            self._breaker.record_failure(self.name, self.destination.circuit_breaker_failures,
                                         self.destination.circuit_breaker_seconds)

    def close(self) -> None:
        """Give back the association slot."""
        if self._limiter is not None and self._slot is not None:
            self._limiter.release(self.name, self._slot)
            self._slot = None


class StoreSession:
    """One association to one destination, reused for a whole batch.

    Use as a context manager. When the association drops in the middle of a
    batch, the next :meth:`store` opens a new one. If that fails too, it
    raises :class:`DestinationError`, and the caller fails the rest.
    """

    def __init__(self, calling_ae: str, name: str, destination: DestinationConfig,
                 pairs: Iterable[ContextKey], limiter: AssociationLimiter | None = None,
                 breaker: CircuitBreaker | None = None,
                 guard: DestinationGuard | None = None) -> None:
        self.name = name
        self._guard = guard or DestinationGuard(name, destination, limiter, breaker)
        self.destination = destination
        self.pairs = sorted(set(pairs))
        if len(self.pairs) > MAX_CONTEXTS:
            raise ValueError(f"{len(self.pairs)} presentation contexts requested, at most {MAX_CONTEXTS}")
        self._ae = AE(ae_title=calling_ae)
        self._ae.acse_timeout = destination.acse_timeout
        self._ae.dimse_timeout = destination.dimse_timeout
        self._ae.network_timeout = destination.dimse_timeout
        # Covers the TCP connection and the TLS handshake, which has no other timeout.
        self._ae.connection_timeout = destination.acse_timeout
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
        self._guard.close()

    def _associate(self) -> None:
        self._guard.before_associate()
        dest = self.destination
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in self.pairs]
        assoc = self._ae.associate(
            dest.host, dest.port, contexts=contexts, ae_title=dest.ae_title,
            max_pdu=dest.max_pdu, evt_handlers=NODELAY_HANDLERS, tls_args=client_tls(self.name, dest),
        )
        if not assoc.is_established:
            self._guard.association_failed()
            message = (f"destination {self.name} ({dest.ae_title}@{dest.host}:{dest.port}) "
                       f"{association_failure(assoc, self._ae.ae_title, dest)}")
            if _no_context_accepted(assoc):
                raise ContextsRejected(message, self.pairs)
            raise DestinationError(message)
        self._guard.associated()
        pace(assoc)  # read a large file no faster than it is sent
        self._assoc = assoc
        LOGGER.debug("associated with %s: %d contexts proposed, %d accepted", self.name,
                      len(contexts), len(assoc.accepted_contexts))

    def ensure_association(self) -> None:
        """Open a new association if the last one was lost, so that :meth:`accepts` is current.

        Raises
        ------
        DestinationError
            The destination sent no response to MAX_SILENT_STORES requests
            in a row, or a new association could not be opened.
        """
        if self._silent >= MAX_SILENT_STORES:
            raise silent_destination(self.name, self._silent)
        if self._assoc is None or not self._assoc.is_established:
            LOGGER.warning("association with %s was lost; opening a new one", self.name)
            self._associate()

    def accepts(self, sop_class: str, syntax: str) -> bool:
        """Tell whether the current association accepted this pair."""
        if self._assoc is None:
            return False
        return any(cx.abstract_syntax == sop_class and syntax in cx.transfer_syntax
                   for cx in self._assoc.accepted_contexts)

    def store(self, ds: Dataset | Path, sop_class: str, syntax: str) -> StoreResult:
        """Send one data set, or the Part 10 file at a path, and classify the response.

        A file is streamed as it is stored after its File Meta Information,
        so its (0002,0002) and (0002,0003) must match the data set and its
        (0002,0010) must be ``syntax``.

        Raises
        ------
        DestinationError
            The association dropped and a new one could not be opened.
        """
        self.ensure_association()
        if not self.accepts(sop_class, syntax):
            return not_accepted(self.name, sop_class, syntax)
        assert self._assoc is not None
        self._guard.keep()
        started = time.monotonic()
        try:
            if isinstance(ds, Path):
                # Without this setting pynetdicom decodes the whole file with
                # dcmread and encodes it again. With it, pynetdicom sends the
                # bytes after the File Meta Information as read.
                _config.STORE_SEND_CHUNKED_DATASET = True
            response = self._assoc.send_c_store(ds)
        except (ValueError, AttributeError) as exc:
            return StoreResult("failure", None, f"cannot encode the data set: {exc}")
        except OSError as exc:
            return StoreResult("failure", None, f"cannot read the file to send: {exc.strerror or exc}")
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
            return no_response(self.name, why)
        self._silent = 0
        comment = response.get("ErrorComment")
        return classify_status(int(status), str(comment) if comment else None)


def is_out_of_resources(status: int) -> bool:
    """Tell whether a C-STORE status is 0xA7xx, Refused: Out of Resources (PS3.4 B.2.3)."""
    return status & 0xFF00 == 0xA700


def _no_context_accepted(assoc: Association) -> bool:
    return bool(assoc.rejected_contexts) and not assoc.accepted_contexts


def association_failure(assoc: Association, calling_ae: str, destination: DestinationConfig) -> str:
    """Describe why an association was not established, and what to check."""
    if assoc.is_rejected:
        return rejection(calling_ae, destination)
    if _no_context_accepted(assoc):
        # pynetdicom aborts an association in which no presentation context was accepted.
        return no_context_accepted(str(syntax) for cx in assoc.rejected_contexts
                                   for syntax in cx.transfer_syntax)
    # pynetdicom reports a refused or timed-out connection and a failed TLS
    # handshake as an abort, so probe the port, then the handshake, to tell
    # a stopped service or a certificate problem from a dropped association.
    return (connection_problem(destination) or tls_problem(destination)
            or "aborted the association request; check its log for the reason")


def rejection(calling_ae: str, destination: DestinationConfig) -> str:
    """Describe an A-ASSOCIATE-RJ and what to check."""
    return (f"rejected the association; check that it accepts calling AE title {calling_ae} "
            f"and that its own AE title is {destination.ae_title}")


def no_context_accepted(syntaxes: Iterable[str]) -> str:
    """Describe an association in which the destination accepted no presentation context."""
    return ("accepted none of the proposed presentation contexts, so it takes none of the "
            f"transfer syntaxes {', '.join(sorted(set(syntaxes)))} for these SOP classes")


def connection_problem(destination: DestinationConfig) -> str | None:
    """Open a TCP connection to ``destination`` and describe why it fails, or return None."""
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
    return None


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
    ae.connection_timeout = destination.acse_timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=NODELAY_HANDLERS, tls_args=client_tls(name, destination))
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
