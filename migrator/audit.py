"""Writing outcomes: an audit row per attempt and the instance's final outcome."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.orm import Session

from migrator.state.models import AuditEntry, Instance, Outcome, SinBinItem

HOST = socket.gethostname()

_INSTANCES = cast(Table, Instance.__table__)
_INSERT_AUDIT = insert(cast(Table, AuditEntry.__table__))
_SET_OUTCOME = (update(_INSTANCES).where(_INSTANCES.c.id == bindparam("instance"))
                .values(outcome=bindparam("new_outcome")))
_INSERT_SINBIN_ITEM = insert(cast(Table, SinBinItem.__table__))


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Record:
    """One instance's outcome, as the pipeline hands it to :func:`write`."""

    instance_id: int
    outcome: Outcome
    batch_id: int | None = None
    reason: str | None = None
    reconciliation: str | None = None
    route_rule: str | None = None
    destination: str | None = None
    dimse_status: int | None = None
    #: A failure that the batch's automatic retry may clear.
    transient: bool = False
    changes: list[dict[str, Any]] | None = None
    started_at: datetime = field(default_factory=now)
    #: For the sin bin: whether a copy is in the sin bin archive.
    archived: bool = True


def write(session: Session, record: Record, commit: bool = True, final: bool = True) -> None:
    """Store the audit row, set the instance's outcome and, for the sin bin, its item.

    With ``final`` False only the audit row is written: a failed release
    from the sin bin leaves the instance's outcome as it was.
    """
    finished = now()
    # Prebuilt Core statements, not ORM objects: the unit of work's flush and
    # building a statement per row each cost more than the INSERT itself.
    session.execute(_INSERT_AUDIT, {
        "instance_id": record.instance_id, "batch_id": record.batch_id,
        "outcome": record.outcome.value, "reason": record.reason,
        "reconciliation": record.reconciliation, "route_rule": record.route_rule,
        "destination": record.destination, "dimse_status": record.dimse_status,
        "transient": record.transient, "changes": record.changes or None,
        "started_at": record.started_at, "finished_at": finished, "host": HOST,
    })
    if not final:
        if commit:
            session.commit()
        return
    session.execute(_SET_OUTCOME, {"instance": record.instance_id, "new_outcome": record.outcome.value})
    if record.outcome in (Outcome.SINBINNED, Outcome.UNREADABLE):
        session.execute(_INSERT_SINBIN_ITEM, {
            "instance_id": record.instance_id, "reason": record.reason or "",
            "archived": record.outcome is Outcome.SINBINNED, "created_at": finished})
    if commit:
        session.commit()
