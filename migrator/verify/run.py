"""Verifying one destination: query it study by study and compare with the audit."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from sqlalchemy.orm import Session

from migrator.config import DestinationConfig
from migrator.errors import DestinationError
from migrator.verify.commit import CommitTracker, Transaction
from migrator.verify.compare import (
    Kind,
    ReportRow,
    StudyResult,
    compare_study,
    query_failed,
    without_study_uid,
)
from migrator.verify.query import DestinationQuery, FindClient, StudyLookup
from migrator.verify.recorded import RecordedAudit, RecordedInstance, RecordedStudy
from migrator.verify.report import DestinationSummary, ReportWriter

LOGGER = logging.getLogger(__name__)

#: Studies between two progress lines in the log.
PROGRESS_STUDIES = 1000


@dataclass(frozen=True)
class Target:
    """A destination to verify, or several destinations that store into one archive."""

    #: The name in the report: the destination's, or the names joined with "+".
    name: str
    #: The destinations whose deliveries the archive should store.
    members: tuple[str, ...]
    #: The first member's configuration, which C-FIND and Storage Commitment use.
    config: DestinationConfig


def group_targets(destinations: dict[str, DestinationConfig]) -> list[Target]:
    """Group destinations with the same ``verify_archive`` into one target, in configuration order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, config in destinations.items():
        key = ("archive", config.verify_archive) if config.verify_archive else ("destination", name)
        groups.setdefault(key, []).append(name)
    return [Target("+".join(members), tuple(members), destinations[members[0]])
            for members in groups.values()]


@dataclass(frozen=True)
class VerifyOptions:
    """How to verify, common to every destination."""

    #: Study Instance UIDs per STUDY level C-FIND, and studies per Storage Commitment request.
    chunk_size: int = 50
    #: The destinations' limit on matches per C-FIND; overrides verify_max_results.
    max_results: int | None = None
    #: Per destination, the only studies to check; a destination not in it has all checked.
    only: dict[str, set[str]] | None = None
    #: Also request Storage Commitment for the instances the audit records as delivered.
    commit: bool = False
    #: Seconds to wait for Storage Commitment reports after the last request.
    commit_timeout: float = 60.0
    #: True when a listener receives reports that a destination sends on an association of its own.
    commit_listening: bool = False


def _chunks(studies: Iterable[RecordedStudy], size: int) -> Iterator[list[RecordedStudy]]:
    iterator = iter(studies)
    while chunk := list(islice(iterator, size)):
        yield chunk


def verify_destination(session: Session, calling_ae: str, target: Target, options: VerifyOptions,
                       writer: ReportWriter, tracker: CommitTracker | None = None) -> DestinationSummary:
    """Verify one destination, or one archive, against the audit, writing its rows to ``writer``.

    An unreachable destination, or one that rejects the association, ends
    its verification with ``summary.error`` set. A failed C-FIND is
    reported for its study, and the verification goes on.
    """
    name, destination = target.name, target.config
    summary = DestinationSummary(name)
    started = time.monotonic()
    only = options.only.get(name) if options.only is not None else None
    LOGGER.info("verifying destination %s (%s@%s:%d)", name, destination.ae_title, destination.host,
                destination.port)
    audit = RecordedAudit(session, target.members)
    max_results = options.max_results or destination.verify_max_results
    handlers = tracker.handlers if tracker is not None and options.commit else None
    committing = handlers is not None
    query: DestinationQuery | None = None
    try:
        with FindClient(calling_ae, target.members[0], destination, handlers) as client:
            query = DestinationQuery(client, max_results, destination.verify_uid_lists)
            next_progress = PROGRESS_STUDIES
            delivered_elsewhere: Counter[str] = Counter()
            for chunk in _chunks(audit.studies(only), options.chunk_size):
                results = verify_chunk(query, audit, chunk)
                for result in results:
                    writer.write(name, result)
                    summary.add(result)
                    _count_delivered_elsewhere(result, target, delivered_elsewhere)
                if summary.studies >= next_progress:
                    LOGGER.info("%s: %d studies checked, %d verified", name, summary.studies, summary.verified)
                    next_progress += PROGRESS_STUDIES
                if committing and tracker is not None:
                    try:
                        _request_commitment(tracker, client, name, chunk)
                    except DestinationError as exc:
                        # The C-FIND verification goes on without commitment.
                        LOGGER.warning("%s; no more Storage Commitment requests to %s", exc, name)
                        summary.commit_error = str(exc)
                        committing = False
            if handlers is not None and tracker is not None:
                _finish_commitment(tracker, name, options, writer, summary)
            for other, count in sorted(delivered_elsewhere.items()):
                summary.notes.append(
                    f"{count} unexpected instances were delivered to {other}. If {other} stores into the "
                    f"same archive as {name}, give both the same verify_archive to verify them together.")
    except DestinationError as exc:
        summary.error = str(exc)
        writer.write_row(name, ReportRow(Kind.NOT_VERIFIED, "", detail=summary.error))
    else:
        writer.write_row(name, ReportRow(Kind.FINISHED, "", expected=summary.expected, found=summary.found,
                                         detail=f"{summary.studies} studies checked"))
    writer.flush()
    summary.requests = query.requests if query is not None else 0
    summary.seconds = time.monotonic() - started
    if summary.query_failed:
        LOGGER.warning("%s: C-FIND failed for %d studies; the report lists each with the error",
                       name, summary.query_failed)
    return summary


def verify_chunk(query: DestinationQuery, audit: RecordedAudit,
                 chunk: list[RecordedStudy]) -> list[StudyResult]:
    """Query the destination for one chunk of studies and compare each with the audit."""
    queried = [study.study_uid for study in chunk if study.study_uid]
    lookup = query.studies(queried) if queried else StudyLookup()
    results = []
    for study in chunk:
        uid = study.study_uid
        if not uid:
            result = without_study_uid(study)
        elif uid in lookup.failed:
            result = query_failed(study, f"STUDY level: {lookup.failed[uid]}")
        elif (match := lookup.found.get(uid)) is None:
            result = compare_study(study, None, None)
        else:
            expected = {i.uids.sop_instance: i.uids.series for i in study.delivered if i.uids.sop_instance}
            listing = query.instances(uid, match.instance_count, expected)
            if listing.error is not None:
                result = query_failed(study, f"IMAGE level: {listing.error}")
            else:
                result = compare_study(study, match, listing)
        describe_unexpected(audit, result)
        results.append(result)
    return results


def _count_delivered_elsewhere(result: StudyResult, target: Target, counts: Counter[str]) -> None:
    for row in result.instances:
        recorded = row.recorded
        if row.kind is Kind.UNEXPECTED and recorded is not None and recorded.delivered \
                and recorded.destination is not None and recorded.destination not in target.members:
            counts[recorded.destination] += 1


def describe_unexpected(audit: RecordedAudit, result: StudyResult) -> None:
    """Fill in what the audit records about each unexpected instance."""
    for row in result.instances:
        if row.kind is not Kind.UNEXPECTED:
            continue
        if row.recorded is not None:
            row.detail = (f"recorded as {row.recorded.outcome} at {row.recorded.destination}"
                          + (f": {row.recorded.reason}" if row.recorded.reason else ""))
            continue
        assert row.sop_instance_uid is not None
        records = audit.describe(row.sop_instance_uid)
        if not records:
            row.detail = "no instance with this SOP Instance UID has an outcome in the state database"
            continue
        # Prefer the record at this destination, then any delivery, then the latest.
        at_target = [r for r in records if r.destination in audit.destinations]
        row.recorded = (at_target or [r for r in records if r.delivered] or records)[-1]
        row.detail = _describe_record(row.recorded, row.study_uid, audit.destinations)


def _describe_record(recorded: RecordedInstance, study_uid: str, destinations: tuple[str, ...]) -> str:
    if recorded.destination in destinations and recorded.delivered:
        return (f"recorded as {recorded.outcome} to {recorded.destination} in study {recorded.uids.study}, "
                f"not in study {study_uid}")
    where = f"to {recorded.destination}" if recorded.destination else "without a destination"
    text = f"last recorded as {recorded.outcome} {where}"
    return text + (f": {recorded.reason}" if recorded.reason else "")


def _request_commitment(tracker: CommitTracker, client: FindClient, target: str,
                        chunk: list[RecordedStudy]) -> None:
    # SOP Instance UID -> (SOP Class UID, SOP Instance UID, Study Instance UID)
    instances: dict[str, tuple[str, str, str]] = {}
    for study in chunk:
        for instance in study.delivered:
            sop_instance_uid = instance.uids.sop_instance
            if study.study_uid and instance.sop_class_uid and sop_instance_uid:
                instances[sop_instance_uid] = (instance.sop_class_uid, sop_instance_uid, study.study_uid)
    if instances:
        tracker.request(client, target, [instances[uid] for uid in sorted(instances)])


def _finish_commitment(tracker: CommitTracker, name: str, options: VerifyOptions, writer: ReportWriter,
                       summary: DestinationSummary) -> None:
    """Wait for the reports of every transaction of ``name`` and write their rows."""
    transactions = tracker.wait(name, options.commit_timeout)
    for transaction in transactions:
        for row in commitment_rows(transaction):
            writer.write_row(name, row)
            summary.add_commitment(row)
    unreported = [t for t in transactions if not t.reported]
    if unreported and not options.commit_listening:
        summary.notes.append(
            f"{len(unreported)} of {len(transactions)} Storage Commitment requests got no N-EVENT-REPORT "
            f"on their association within {options.commit_timeout:g} s. Destination {name} probably "
            "sends the reports on an association of its own (Orthanc does): run with --commit-listen "
            "HOST:PORT and give that address to the destination for our AE title.")
    elif unreported:
        summary.notes.append(
            f"{len(unreported)} of {len(transactions)} Storage Commitment requests got no N-EVENT-REPORT "
            f"within {options.commit_timeout:g} s, neither on their association nor on the listener. "
            f"Check the address that destination {name} has for our AE title, or raise --commit-timeout.")
    elif transactions:
        where = ("on the request's association" if all(t.on_request_association for t in transactions)
                 else "on an association of its own")
        summary.notes.append(f"destination {name} sent its Storage Commitment reports {where}")


def commitment_rows(transaction: Transaction) -> list[ReportRow]:
    """Return a row per instance the destination did not commit to, or per study without a report."""
    if not transaction.reported:
        return [ReportRow(Kind.COMMIT_UNCONFIRMED, study_uid,
                          detail=f"no N-EVENT-REPORT for transaction {transaction.uid}")
                for study_uid in sorted(set(transaction.studies.values()))]
    rows = []
    for sop_instance_uid, study_uid in sorted(transaction.studies.items(), key=lambda item: (item[1], item[0])):
        if sop_instance_uid in transaction.failed:
            rows.append(ReportRow(Kind.NOT_COMMITTED, study_uid, sop_instance_uid,
                                  detail=transaction.failed[sop_instance_uid]))
        elif sop_instance_uid not in transaction.committed:
            rows.append(ReportRow(Kind.NOT_COMMITTED, study_uid, sop_instance_uid,
                                  detail="the N-EVENT-REPORT lists it neither as committed nor as failed"))
    return rows
