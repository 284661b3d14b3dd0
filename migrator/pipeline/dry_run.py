"""``migrator start --dry-run``: every step of a migration except the C-STORE.

Each instance is reconciled, routed and corrected as for sending, and the
file that would be sent is read through once, as a sender reads it. An
audit row with outcome ``dry_run`` then records the destination it would
reach, or why it would fail. The instance keeps no outcome and its batch
goes back to the plan, so a later ``migrator start`` still migrates
everything. A dry run sizes a migration (reading, reconciliation,
correction and the state database's writes) before the destination is
ready, and finds unreadable files and unmatched instances early.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, SKIP
from migrator.context import RunContext
from migrator.dicom.prepare import (
    Corrections,
    PreparedFile,
    ScratchFolder,
    prepare_file,
)
from migrator.pipeline.decide import Decision
from migrator.pipeline.deliver import check_identity
from migrator.pipeline.lease import Lease
from migrator.state.models import Outcome
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)

#: Bytes read at a time when reading a prepared file through.
_CHUNK = 1 << 20
#: The key of the run's outcome counts for instances that would fail.
WOULD_FAIL = "dry run: would fail"


def rehearse(context: RunContext, session: Session, lease: Lease, destination: str,
             decisions: Sequence[Decision]) -> Counter[str]:
    """Prepare each instance for ``destination`` without sending it and record what would happen.

    Returns counts keyed "dry run: <destination>", or :data:`WOULD_FAIL`.

    Raises
    ------
    LeaseLost
        Another worker took the batch over.
    """
    counts: Counter[str] = Counter()
    with ScratchFolder() as scratch:
        for decision in decisions:
            started = audit.now()
            reason, changes = None, None
            if destination != SKIP:
                try:
                    prepared = prepare_file(decision.path, _corrections(context, destination, decision),
                                            scratch)
                    check_identity(decision, prepared)
                    changes = [change.as_dict() for change in prepared.changes]
                    _read_through(prepared)
                except Exception as exc:  # as in a real run, a file that cannot be sent ends nothing
                    LOGGER.warning("instance %d (%s): %s", decision.instance.id, decision.path, exc)
                    reason = f"would fail: {decision.path}: {exc}"
                    counts[WOULD_FAIL] += 1
                else:
                    counts[f"dry run: {destination}"] += 1
            else:
                counts[f"dry run: {destination}"] += 1
            if destination in (SKIP, SINBIN) and reason is None:
                reason = decision.route.reason
            audit.write(session, audit.Record(
                instance_id=decision.instance.id, batch_id=lease.batch_id, outcome=Outcome.DRY_RUN,
                reason=reason, reconciliation=decision.reconciliation.outcome.value,
                route_rule=decision.route.rule, destination=None if destination == SKIP else destination,
                changes=changes, started_at=started), commit=False, final=False)
            lease.renew(session)
    session.commit()
    return counts


def _corrections(context: RunContext, destination: str, decision: Decision) -> Corrections | None:
    if destination == SINBIN:
        return None  # the sin bin receives files as stored
    step_context = StepContext(decision.instance.id, decision.reconciliation.values)
    return lambda ds: run_steps(context.steps, ds, step_context)


def _read_through(prepared: PreparedFile) -> None:
    """Read the file that would be sent, as a sender would, then discard a rewritten copy."""
    try:
        with prepared.path.open("rb") as fp:
            while fp.read(_CHUNK):
                pass
    finally:
        prepared.discard()
