"""The sin bin: listing held-back items and releasing them after review.

A released item goes through the normal path: it is read again, corrected
from the legacy database, and sent to the named destination, with the
release recorded in the audit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator import audit
from migrator.context import RunContext
from migrator.dicom.read import UnreadableFile, read_instance, transfer_syntax_of
from migrator.dicom.send import StoreSession
from migrator.errors import ConfigError, DestinationError
from migrator.reconcile.legacy import legacy_values
from migrator.state.models import Instance, Outcome, SinBinItem, StorageRoot
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinBinRow:
    item: SinBinItem
    instance: Instance
    root: str


def list_items(session: Session, reason: str | None = None, root: str | None = None,
               study: str | None = None, include_released: bool = False,
               ids: list[int] | None = None) -> list[SinBinRow]:
    """Return sin bin items, filtered by reason prefix, root name, Study UID or id."""
    query = (select(SinBinItem, Instance, StorageRoot.name)
             .join(Instance, Instance.id == SinBinItem.instance_id)
             .join(StorageRoot, StorageRoot.id == Instance.root_id)
             .order_by(SinBinItem.id))
    if reason:
        query = query.where(SinBinItem.reason.startswith(reason))
    if root:
        query = query.where(StorageRoot.name == root)
    if study:
        query = query.where(Instance.study_uid == study)
    if ids:
        query = query.where(SinBinItem.id.in_(ids))
    if not include_released:
        query = query.where(SinBinItem.released_at.is_(None))
    return [SinBinRow(item, instance, name) for item, instance, name in session.execute(query)]


def release(context: RunContext, rows: list[SinBinRow], destination: str) -> dict[int, str]:
    """Send each item to ``destination``; return item id -> outcome or error.

    Raises
    ------
    ConfigError
        ``destination`` is not a configured destination.
    """
    settings = context.settings
    if destination not in settings.destinations:
        raise ConfigError(f"unknown destination '{destination}'; expected one of "
                          f"{sorted(settings.destinations)}")
    results: dict[int, str] = {}
    releasable = [row for row in rows if row.item.archived]
    for row in rows:
        if not row.item.archived:
            results[row.item.id] = "not releasable: the file could not be parsed"
    if not releasable:
        return results
    uids = [row.instance.sop_instance_uid or "" for row in releasable]
    legacy_rows = context.legacy.fetch(uids)
    pairs = {(row.instance.sop_class_uid or "", row.instance.transfer_syntax or "") for row in releasable}
    with context.sessions() as session:
        try:
            with StoreSession(settings.run.ae_title, destination, settings.destinations[destination],
                              pairs, context.limiter) as store:
                for row in releasable:
                    results[row.item.id] = _release_one(context, session, store, row, destination,
                                                        legacy_rows.get(row.instance.sop_instance_uid or ""))
        except DestinationError as exc:
            for row in releasable:
                results.setdefault(row.item.id, f"failed: {exc}")
    return results


def _release_one(context: RunContext, session: Session, store: StoreSession, row: SinBinRow,
                 destination: str, legacy_row: dict[str, object] | None) -> str:
    started = audit.now()
    path = context.settings.resolve(context.settings.root(row.root).path) / row.instance.rel_path
    reason = f"released from sin bin item {row.item.id} ({row.item.reason})"
    try:
        ds = read_instance(path)
    except UnreadableFile as exc:
        audit.write(session, audit.Record(instance_id=row.instance.id, outcome=Outcome.FAILED,
                                          destination=destination, reason=f"{reason}: {path}: {exc}",
                                          started_at=started), final=False)
        return f"failed: {exc}"
    values = legacy_values(legacy_row, context.settings.legacy.path_column) if legacy_row else {}
    changes = run_steps(context.steps, ds, StepContext(row.instance.id, values))
    result = store.store(ds, str(ds.SOPClassUID), str(transfer_syntax_of(ds)))
    if result.category == "failure":
        audit.write(session, audit.Record(instance_id=row.instance.id, outcome=Outcome.FAILED,
                                          destination=destination, dimse_status=result.status,
                                          reason=f"{reason}: {result.detail}", started_at=started),
                    final=False)
        return f"failed: {result.detail}"
    outcome = Outcome.SENT if result.category == "success" else Outcome.SENT_WITH_WARNING
    row.item.released_to = destination
    row.item.released_at = audit.now()
    session.merge(row.item)
    audit.write(session, audit.Record(
        instance_id=row.instance.id, outcome=outcome, destination=destination,
        dimse_status=result.status, reason=reason if result.detail is None else f"{reason}; {result.detail}",
        changes=[change.as_dict() for change in changes], started_at=started))
    return outcome.value
