"""Sending one batch's instances to one destination over one association."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN
from migrator.context import RunContext
from migrator.dicom.read import UnreadableFile, read_instance, transfer_syntax_of
from migrator.dicom.send import MAX_CONTEXTS, StoreResult, StoreSession
from migrator.errors import DestinationError
from migrator.pipeline.decide import Decision
from migrator.pipeline.lease import Lease
from migrator.state.models import Outcome
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)


def _context_groups(decisions: Sequence[Decision]) -> list[list[Decision]]:
    """Split decisions so that no association needs more than 128 contexts."""
    groups: list[list[Decision]] = []
    pairs: set[tuple[str, str]] = set()
    for decision in decisions:
        pair = (decision.instance.sop_class_uid or "", decision.instance.transfer_syntax or "")
        if not groups or (pair not in pairs and len(pairs) >= MAX_CONTEXTS):
            groups.append([])
            pairs = set()
        pairs.add(pair)
        groups[-1].append(decision)
    return groups


def deliver(context: RunContext, session: Session, lease: Lease, destination: str,
            decisions: Sequence[Decision]) -> None:
    """Send ``decisions`` to ``destination`` (a name or the sin bin), recording each outcome.

    Raises
    ------
    LeaseLost
        Another worker took the batch over; nothing more is sent.
    """
    for group in _context_groups(decisions):
        _deliver_group(context, session, lease, destination, group)


def _record(decision: Decision, batch_id: int, outcome: Outcome, **fields: object) -> audit.Record:
    return audit.Record(
        instance_id=decision.instance.id, batch_id=batch_id, outcome=outcome,
        reconciliation=decision.reconciliation.outcome.value, route_rule=decision.route.rule,
        **fields,  # type: ignore[arg-type]
    )


def _deliver_group(context: RunContext, session: Session, lease: Lease, destination: str,
                   decisions: Sequence[Decision]) -> None:
    settings = context.settings
    batch_id = lease.batch_id
    to_sinbin = destination == SINBIN
    config = settings.sinbin if to_sinbin else settings.destinations[destination]
    pairs = {(d.instance.sop_class_uid or "", d.instance.transfer_syntax or "") for d in decisions}
    done = 0
    try:
        with StoreSession(settings.run.ae_title, destination, config, pairs, context.limiter,
                          context.breaker) as store:
            for decision in decisions:
                lease.renew(session)
                _store_one(context, session, store, batch_id, destination, decision)
                done += 1
    except DestinationError as exc:
        LOGGER.warning("batch %d: %s; %d instance(s) failed", batch_id, exc, len(decisions) - done)
        for decision in decisions[done:]:
            audit.write(session, _record(decision, batch_id, Outcome.FAILED, destination=destination,
                                         reason=str(exc), transient=exc.transient))


def _store_one(context: RunContext, session: Session, store: StoreSession, batch_id: int,
               destination: str, decision: Decision) -> None:
    started = audit.now()
    to_sinbin = destination == SINBIN
    try:
        ds = read_instance(decision.path)
    except UnreadableFile as exc:
        LOGGER.warning("instance %d (%s): %s", decision.instance.id, decision.path, exc)
        audit.write(session, _record(decision, batch_id, Outcome.FAILED, destination=destination,
                                     reason=f"{decision.path}: {exc}", started_at=started))
        return
    changes = []
    if not to_sinbin:
        # The sin bin receives the file as stored; corrections apply on release.
        step_context = StepContext(decision.instance.id, decision.reconciliation.values)
        changes = run_steps(context.steps, ds, step_context)
    result = store.store(ds, str(ds.SOPClassUID), str(transfer_syntax_of(ds)))
    outcome, reason = _classify(result, to_sinbin, decision)
    if outcome is Outcome.FAILED:
        LOGGER.warning("instance %d (%s) to %s failed: %s", decision.instance.id, decision.path,
                       destination, reason)
    audit.write(session, _record(
        decision, batch_id, outcome, destination=destination, reason=reason,
        dimse_status=result.status, transient=outcome is Outcome.FAILED and result.transient,
        changes=[change.as_dict() for change in changes],
        started_at=started,
    ))


def _classify(result: StoreResult, to_sinbin: bool, decision: Decision) -> tuple[Outcome, str | None]:
    held_back = decision.route.reason
    details = [d for d in (decision.route.detail, decision.reconciliation.detail) if d]
    if details and to_sinbin:
        held_back = f"{held_back}: {'; '.join(details)}"
    if result.category == "failure":
        if to_sinbin:
            return Outcome.FAILED, f"sin bin store failed ({result.detail}); held back as {held_back}"
        return Outcome.FAILED, result.detail
    if to_sinbin:
        warning = f" ({result.detail})" if result.detail else ""
        return Outcome.SINBINNED, f"{held_back}{warning}"
    if result.category == "warning":
        return Outcome.SENT_WITH_WARNING, result.detail
    return Outcome.SENT, None
