"""C-FIND queries to a destination: which studies and instances it stores.

Every query uses the Study Root Query/Retrieve Information Model - FIND
(DICOM PS3.4). A destination may stop returning matches at a limit of its
own, so each step checks whether the response could be cut short and
splits the query until it is not:

- STUDY level, with a list of Study Instance UIDs in one identifier (UID
  list matching). A response that ends with status 0xFE00 (matching
  terminated due to cancel, as Orthanc 1.10 ends a query that reaches its
  ``LimitFindResults``) or 0xA700 (out of resources) is split in halves,
  and so is a list longer than ``max_results``. Each study missing from a list response is queried alone
  before it counts as absent, so a destination that ignores UID lists, or
  cuts a response short without saying so, hides no study.
- IMAGE level, one query per study. A response that is cut short, or has
  fewer matches than the STUDY level's Number of Study Related Instances,
  is repeated series by series. Each series that a SERIES level query
  returns or the audit names gets an IMAGE level query. When the response for
  one series is cut short too, its instances that the audit expects are
  looked for by lists of SOP Instance UIDs.

A listing is complete when no response was cut short, or when it has as
many instances as the destination's Number of Study Related Instances.
Otherwise it is marked incomplete: the destination may store instances
that no query returned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import _UI
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT_FIND,
)

from migrator.config import DestinationConfig
from migrator.dicom.net import NODELAY_HANDLERS, client_tls
from migrator.dicom.send import association_failure
from migrator.errors import DestinationError

LOGGER = logging.getLogger(__name__)

#: C-FIND statuses of a pending response that carries a match.
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
#: Statuses after which more matches may exist: cancelled, or out of resources.
CUT_SHORT = (0xFE00, 0xA700)
#: SOP Instance UIDs per IMAGE level query that looks for listed instances.
UID_LIST_SIZE = 100


@dataclass
class FindResponse:
    """The matches of one C-FIND request and how it ended."""

    matches: list[Dataset]
    #: The final (0000,0900) Status; None when no final response arrived.
    status: int | None
    #: Why the query failed; None when it ended with success or was cut short.
    error: str | None = None

    @property
    def cut_short(self) -> bool:
        """True when the destination stopped before it returned every match."""
        return self.status in CUT_SHORT


def describe_status(status: int) -> str:
    meanings = {0xA700: "refused: out of resources", 0xA900: "identifier does not match SOP class",
                0xFE00: "matching terminated due to cancel", 0x0122: "SOP class not supported"}
    meaning = meanings.get(status, "unable to process" if status & 0xF000 == 0xC000 else "failure")
    return f"C-FIND status 0x{status:04X} ({meaning})"


class FindClient:
    """One association to a destination for C-FIND and, optionally, Storage Commitment.

    Use as a context manager. A query after the association dropped opens
    a new one.
    """

    def __init__(self, calling_ae: str, name: str, destination: DestinationConfig,
                 commit_handlers: list[EventHandlerType] | None = None) -> None:
        self.name = name
        self.destination = destination
        self._ae = AE(ae_title=calling_ae)
        self._ae.acse_timeout = destination.acse_timeout
        self._ae.dimse_timeout = destination.dimse_timeout
        self._ae.network_timeout = destination.dimse_timeout
        # Covers the TCP connection and the TLS handshake, which has no other timeout.
        self._ae.connection_timeout = destination.acse_timeout
        self._ae.add_requested_context(STUDY_ROOT_FIND)
        # _UI is pynetdicom's type of one extended negotiation item in AE.associate().
        self._roles: list[_UI] = []
        self._handlers: list[EventHandlerType] = list(NODELAY_HANDLERS)
        if commit_handlers is not None:
            self._ae.add_requested_context(StorageCommitmentPushModel)
            # Offering the SCP role lets the destination send the
            # N-EVENT-REPORT back on this association.
            self._roles = [build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)]
            self._handlers += commit_handlers
        self._assoc: Association | None = None

    def __enter__(self) -> FindClient:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def association(self) -> Association:
        """The open association, opened again if it dropped.

        Raises
        ------
        DestinationError
            The association could not be opened.
        """
        if self._assoc is None or not self._assoc.is_established:
            self.open()
        assert self._assoc is not None
        return self._assoc

    def open(self) -> None:
        """Open the association.

        Raises
        ------
        DestinationError
            The destination cannot be reached, rejected the association or
            does not support C-FIND in the Study Root model.
        ConfigError
            A file of the destination's ``tls`` table is missing or invalid.
        """
        dest = self.destination
        where = f"destination {self.name} ({dest.ae_title}@{dest.host}:{dest.port})"
        assoc = self._ae.associate(dest.host, dest.port, ae_title=dest.ae_title, max_pdu=dest.max_pdu,
                                   ext_neg=self._roles or None, evt_handlers=self._handlers,
                                   tls_args=client_tls(self.name, dest))
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                raise DestinationError(f"{where} does not support C-FIND in the Study Root Query/"
                                       "Retrieve Information Model, which verify needs", transient=False)
            raise DestinationError(f"{where} {association_failure(assoc, self._ae.ae_title, dest)}")
        self._assoc = assoc
        if not self.supports(STUDY_ROOT_FIND):
            self.close()
            raise DestinationError(f"{where} does not support C-FIND in the Study Root Query/"
                                   "Retrieve Information Model, which verify needs", transient=False)

    def supports(self, sop_class: str) -> bool:
        """Tell whether the open association accepted a presentation context for ``sop_class``."""
        return self._assoc is not None and any(
            cx.abstract_syntax == sop_class for cx in self._assoc.accepted_contexts)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def find(self, identifier: Dataset) -> FindResponse:
        """Send one C-FIND request and collect every match.

        Raises
        ------
        DestinationError
            The association dropped and could not be opened again.
        """
        assoc = self.association
        matches: list[Dataset] = []
        for status, match in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
            if "Status" not in status:
                # pynetdicom yields an empty status when no response arrived.
                reason = ("timed out (dimse_timeout)" if assoc.is_established
                          else "the association was aborted")
                if assoc.is_established:
                    assoc.abort()
                return FindResponse(matches, None, f"no C-FIND response: {reason}")
            code = int(status.Status)
            if code in PENDING:
                if match is not None:
                    matches.append(match)
                continue
            if code == SUCCESS or code in CUT_SHORT:
                return FindResponse(matches, code)
            return FindResponse(matches, code, describe_status(code))
        return FindResponse(matches, None, "the C-FIND ended without a final status")


def study_identifier(study_uids: Sequence[str]) -> Dataset:
    """Build a STUDY level identifier that matches a list of Study Instance UIDs."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = list(study_uids) if len(study_uids) > 1 else study_uids[0]
    identifier.NumberOfStudyRelatedInstances = None
    return identifier


def series_identifier(study_uid: str) -> Dataset:
    """Build a SERIES level identifier for every series of one study."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = None
    identifier.NumberOfSeriesRelatedInstances = None
    return identifier


def image_identifier(study_uid: str, series_uid: str | None = None,
                     sop_instance_uids: Sequence[str] = ()) -> Dataset:
    """Build an IMAGE level identifier for one study, or one series, or listed instances of a series.

    Without ``series_uid`` the Series Instance UID is a return key. The
    baseline hierarchical query of PS3.4 requires a single value at each
    level above IMAGE, so a strict destination may reject that query; the
    caller then goes series by series.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    if len(sop_instance_uids) > 1:
        identifier.SOPInstanceUID = list(sop_instance_uids)
    else:
        identifier.SOPInstanceUID = sop_instance_uids[0] if sop_instance_uids else None
    return identifier


def _text(match: Dataset, keyword: str) -> str | None:
    value = match.get(keyword)
    return str(value) if value not in (None, "") else None


def _count(match: Dataset, keyword: str) -> int | None:
    value = match.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass
class StudyMatch:
    """A study that the destination stores."""

    #: The destination's Number of Study Related Instances, if it returned one.
    instance_count: int | None


@dataclass
class StudyLookup:
    """The STUDY level results of one chunk of Study Instance UIDs."""

    found: dict[str, StudyMatch] = field(default_factory=dict)
    #: Study Instance UID -> why the query failed.
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class InstanceListing:
    """The instances that the destination stores in one study."""

    #: SOP Instance UID -> Series Instance UID (None when not returned).
    instances: dict[str, str | None] = field(default_factory=dict)
    #: Why the listing may lack instances: a query was cut short even for one series.
    incomplete: list[str] = field(default_factory=list)
    #: Why the listing failed; None when it succeeded.
    error: str | None = None


class DestinationQuery:
    """The STUDY and IMAGE level queries to one destination, split until nothing is cut short.

    ``max_results`` is the destination's own limit on matches per C-FIND,
    if it has one. A response with that many matches is treated as cut
    short even when its final status is success.
    """

    def __init__(self, client: FindClient, max_results: int | None = None,
                 uid_lists: bool = True) -> None:
        self.client = client
        self.max_results = max_results
        #: False once the destination has shown that it does not match UID lists.
        self.uid_lists = uid_lists
        #: C-FIND requests sent so far.
        self.requests = 0

    def _find(self, identifier: Dataset) -> FindResponse:
        self.requests += 1
        return self.client.find(identifier)

    def _at_limit(self, response: FindResponse) -> bool:
        return self.max_results is not None and len(response.matches) >= self.max_results

    def studies(self, study_uids: Sequence[str]) -> StudyLookup:
        """Find which of ``study_uids`` the destination stores."""
        lookup = StudyLookup()
        if len(study_uids) > 1 and self.uid_lists:
            self._studies_by_list(list(study_uids), lookup)
        else:
            for study_uid in study_uids:
                self._study_alone(study_uid, lookup)
        return lookup

    def _studies_by_list(self, study_uids: list[str], lookup: StudyLookup) -> None:
        if len(study_uids) == 1:
            self._study_alone(study_uids[0], lookup)
            return
        if self.max_results is not None and len(study_uids) > self.max_results:
            self._split(study_uids, lookup)
            return
        response = self._find(study_identifier(study_uids))
        if response.cut_short:
            self._split(study_uids, lookup)
            return
        if response.error is not None:
            self._after_list_error(study_uids, response.error, lookup)
            return

        requested = set(study_uids)
        for match in response.matches:
            uid = _text(match, "StudyInstanceUID")
            if uid in requested:
                lookup.found[uid] = StudyMatch(_count(match, "NumberOfStudyRelatedInstances"))

        # A study missing from a list response is queried alone before it counts as absent.
        unconfirmed = [uid for uid in study_uids if uid not in lookup.found]
        if not unconfirmed:
            return
        before = len(lookup.found)
        for uid in unconfirmed:
            self._study_alone(uid, lookup)
        if len(lookup.found) > before and self.uid_lists:
            LOGGER.warning("destination %s returned studies to single-UID queries that a UID list "
                           "query did not return; querying one study at a time from now on",
                           self.client.name)
            self.uid_lists = False

    def _split(self, study_uids: list[str], lookup: StudyLookup) -> None:
        middle = len(study_uids) // 2
        self._studies_by_list(study_uids[:middle], lookup)
        self._studies_by_list(study_uids[middle:], lookup)

    def _after_list_error(self, study_uids: list[str], error: str, lookup: StudyLookup) -> None:
        # One study can fail a whole list, so the next chunk tries a list again.
        LOGGER.warning("destination %s failed a C-FIND for %d Study Instance UIDs (%s); querying "
                       "them one at a time", self.client.name, len(study_uids), error)
        for uid in study_uids:
            self._study_alone(uid, lookup)

    def _study_alone(self, study_uid: str, lookup: StudyLookup) -> None:
        response = self._find(study_identifier([study_uid]))
        error = response.error
        if response.cut_short and not response.matches:
            error = describe_status(response.status or 0)
        if error is not None:
            lookup.failed[study_uid] = error
            return
        for match in response.matches:
            if _text(match, "StudyInstanceUID") == study_uid:
                lookup.found[study_uid] = StudyMatch(_count(match, "NumberOfStudyRelatedInstances"))

    def instances(self, study_uid: str, destination_count: int | None = None,
                  expected: Mapping[str, str | None] | None = None) -> InstanceListing:
        """List the instances of one study.

        ``destination_count`` is the destination's Number of Study Related
        Instances, and ``expected`` maps the SOP Instance UIDs that the
        audit places in the study to their Series Instance UIDs. A
        study-wide response that is cut short, or has fewer matches than
        ``destination_count``, is repeated series by series, for every
        series that the SERIES level returns or the audit names. A series
        whose response is cut short too is checked for its expected
        instances by SOP Instance UID lists. The listing is complete when
        no response was cut short, or when it has ``destination_count``
        instances.
        """
        study_wide = self._find(image_identifier(study_uid))
        listing = InstanceListing()
        if study_wide.error is None:
            self._add(listing, study_wide.matches, study_uid)
        complete = study_wide.error is None and not study_wide.cut_short and not self._at_limit(study_wide)
        if complete and (destination_count is None or len(listing.instances) >= destination_count):
            return listing
        by_series = self._instances_by_series(study_uid, listing, expected or {})
        if by_series.error is None:
            if by_series.incomplete and destination_count is not None \
                    and len(by_series.instances) >= destination_count:
                # Every instance the destination counts is listed.
                by_series.incomplete = []
            return by_series
        if complete:
            # Fewer instances than the destination counts, and no series-wise
            # listing to check them with: the comparison reports the counts.
            return listing
        if study_wide.error is not None:
            listing.error = f"{study_wide.error}; series by series: {by_series.error}"
        else:
            listing.incomplete.append(
                f"the IMAGE level response was cut short after {len(study_wide.matches)} instances, "
                f"and series by series failed: {by_series.error}")
        return listing

    def _instances_by_series(self, study_uid: str, study_wide: InstanceListing,
                             expected: Mapping[str, str | None]) -> InstanceListing:
        listing = InstanceListing(dict(study_wide.instances))
        response = self._find(series_identifier(study_uid))
        if response.error is not None:
            listing.error = f"SERIES level: {response.error}"
            return listing
        if response.cut_short or self._at_limit(response):
            listing.incomplete.append(f"the SERIES level response was cut short after "
                                      f"{len(response.matches)} series")
        series_uids = {uid for match in response.matches
                       if (uid := _text(match, "SeriesInstanceUID")) is not None}
        series_uids |= {uid for uid in expected.values() if uid is not None}
        for series_uid in sorted(series_uids):
            images = self._find(image_identifier(study_uid, series_uid))
            if images.error is not None:
                listing.error = f"IMAGE level in series {series_uid}: {images.error}"
                return listing
            self._add(listing, images.matches, study_uid)
            if images.cut_short or self._at_limit(images):
                listing.incomplete.append(f"the IMAGE level response for series {series_uid} was "
                                          f"cut short after {len(images.matches)} instances")
                wanted = [sop for sop, series in sorted(expected.items())
                          if series == series_uid and sop not in listing.instances]
                error = self._instances_by_uid(study_uid, series_uid, wanted, listing)
                if error is not None:
                    listing.error = f"IMAGE level in series {series_uid}: {error}"
                    return listing
        return listing

    def _instances_by_uid(self, study_uid: str, series_uid: str, sop_instance_uids: list[str],
                          listing: InstanceListing) -> str | None:
        """Look for listed instances of one series, in lists split until no response is cut short.

        Returns the error of a failed query, or None.
        """
        # A list of n UIDs has at most n matches, so a response to a list no
        # longer than max_results is complete unless its status is 0xFE00 or 0xA700.
        size = min(UID_LIST_SIZE, self.max_results or UID_LIST_SIZE)
        pending = [sop_instance_uids[i:i + size] for i in range(0, len(sop_instance_uids), size)]
        while pending:
            uids = pending.pop()
            response = self._find(image_identifier(study_uid, series_uid, uids))
            if response.error is not None:
                return response.error
            if response.cut_short and len(uids) > 1:
                middle = len(uids) // 2
                pending += [uids[:middle], uids[middle:]]
                continue
            self._add(listing, response.matches, study_uid)
        return None

    @staticmethod
    def _add(listing: InstanceListing, matches: list[Dataset], study_uid: str) -> None:
        for match in matches:
            sop_instance_uid = _text(match, "SOPInstanceUID")
            if sop_instance_uid is None or _text(match, "StudyInstanceUID") not in (None, study_uid):
                continue
            listing.instances[sop_instance_uid] = _text(match, "SeriesInstanceUID")
