"""The report's summary: outcomes per root, failures by reason, the sin bin, the run's span.

These figures describe the state database when the report is made. The
report's time window does not apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pynetdicom.status import code_to_category
from sqlalchemy import case, func, literal_column, select
from sqlalchemy.orm import Session

from migrator.report.sql import as_utc
from migrator.state.models import (
    FINAL_OUTCOMES,
    AuditEntry,
    Instance,
    Outcome,
    SinBinItem,
    StorageRoot,
)
from migrator.state.queries import last_attempts
from migrator.status import PENDING

#: Outcome columns in the order the report shows them.
OUTCOME_COLUMNS = [PENDING] + [outcome.value for outcome in FINAL_OUTCOMES]


@dataclass(frozen=True)
class FailureReason:
    """Instances whose last attempt failed at one destination for one reason."""

    destination: str | None
    #: The C-STORE response status, None when the failure happened before a response.
    dimse_status: int | None
    reason: str
    instances: int


@dataclass(frozen=True)
class Summary:
    #: root name -> outcome (or "pending") -> instances
    outcomes_by_root: dict[str, dict[str, int]]
    #: Failure reasons with the most failed instances, most first.
    failure_reasons: list[FailureReason]
    #: Sin bin items not released: copies in the sin bin archive, and unreadable files left on disk.
    sinbin_archived: int
    sinbin_on_disk: int
    sinbin_released: int
    #: When the first recorded attempt started and the last one finished (UTC).
    run_start: datetime | None
    run_end: datetime | None

    def totals(self) -> dict[str, int]:
        """Add up the outcome counts of every root."""
        totals = dict.fromkeys(OUTCOME_COLUMNS, 0)
        for counts in self.outcomes_by_root.values():
            for outcome, count in counts.items():
                totals[outcome] = totals.get(outcome, 0) + count
        return totals

    @property
    def instances(self) -> int:
        return sum(self.totals().values())


def read_summary(session: Session, top: int) -> Summary:
    """Count outcomes, the ``top`` failure reasons and the sin bin items, and find the run's span."""
    outcomes_by_root: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(StorageRoot.name, Instance.outcome, func.count(Instance.id))
        .join(StorageRoot, StorageRoot.id == Instance.root_id)
        .group_by(StorageRoot.name, Instance.outcome))
    for root, outcome, count in rows:
        outcomes_by_root.setdefault(root, {})[outcome or PENDING] = count

    sinbin = {(bool(archived), bool(released)): count for archived, released, count in session.execute(
        select(SinBinItem.archived, SinBinItem.released_to.is_not(None), func.count(SinBinItem.id))
        .group_by(SinBinItem.archived, SinBinItem.released_to.is_not(None)))}

    start, end = session.execute(select(func.min(AuditEntry.started_at), func.max(AuditEntry.finished_at))
                                 .where(AuditEntry.outcome != Outcome.DRY_RUN.value)).one()
    return Summary(
        outcomes_by_root=outcomes_by_root,
        failure_reasons=read_failure_reasons(session, top),
        sinbin_archived=sinbin.get((True, False), 0),
        sinbin_on_disk=sinbin.get((False, False), 0),
        sinbin_released=sinbin.get((True, True), 0) + sinbin.get((False, True), 0),
        run_start=as_utc(start) if start is not None else None,
        run_end=as_utc(end) if end is not None else None,
    )


def read_failure_reasons(session: Session, top: int) -> list[FailureReason]:
    """Group the failed instances by the destination and reason of their last attempt.

    A failure with a C-STORE status is grouped by that status and shown with
    its PS3.7 category. The Error Comment that the destination may have sent
    is left out, because the report keeps free text from other systems out of
    its pages. Other reasons are the migrator's own messages, and the
    instance's relative path in them is replaced by ``<file>``, so one error
    on many files is counted as one reason.

    NOTE: a file that failed to parse at delivery carries pydicom's error
    message, which could quote a value from that file.
    """
    last = last_attempts(Instance.outcome == Outcome.FAILED.value)
    # Literal SQL, not bound parameters, because PostgreSQL accepts the GROUP BY
    # only when it can match the grouped expression with the selected one.
    reason = case(
        (AuditEntry.dimse_status.is_(None),
         func.replace(func.coalesce(AuditEntry.reason, literal_column("''")), Instance.rel_path,
                      literal_column("'<file>'"))),
        else_=literal_column("''"))
    count = func.count(Instance.id)
    rows = session.execute(
        select(AuditEntry.destination, AuditEntry.dimse_status, reason, count)
        .select_from(last)
        .join(AuditEntry, AuditEntry.id == last.c.id)
        .join(Instance, Instance.id == AuditEntry.instance_id)
        .group_by(AuditEntry.destination, AuditEntry.dimse_status, reason)
        .order_by(count.desc(), AuditEntry.destination, AuditEntry.dimse_status, reason)
        .limit(top))
    return [FailureReason(destination, status, _describe(status) if status is not None else text, n)
            for destination, status, text, n in rows]


def _describe(status: int) -> str:
    return f"C-STORE status 0x{status:04X} ({code_to_category(status)})"
