"""Holding back, during the migration, the instances that need a transformation.

An instance that the routing rules send to a destination is skipped with
the reason "needs transformation" instead when its row in the
reconciliation query has a value in ``legacy.transformation_column``, or
when ``migrator transform load`` listed its SOP Instance UID. Skipping fits
better than the sin bin: the sin bin would store the untransformed image in
its archive and offer it for ``migrator sinbin release``, which sends it
unchanged. A skipped instance stays only on disk until ``migrator transform
run`` imports it from the legacy database and sends it transformed, which
replaces its outcome. Instances routed to the sin bin or skipped by a rule
keep that route.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, SKIP
from migrator.reconcile.legacy import TRANSFORMATION, LegacyDatabase, LegacyRow
from migrator.route import Route
from migrator.state.models import AuditEntry, Instance, Outcome, TransformItem
from migrator.transform.transformation import ACCEPTED, parse_transformation

LOGGER = logging.getLogger(__name__)

#: The route rule and reason of a held-back instance.
HOLD_RULE = "needs transformation"
HOLD_REASON = "needs transformation"
SOURCE = "legacy_db"


def hold_for_transformation(route: Route, row: LegacyRow | None, listed: bool = False) -> Route:
    """Return a skip route when ``route`` goes to a destination and the instance needs a transformation.

    It needs one when ``row`` has a value in the transformation column, or
    when it is ``listed`` as a transform item.
    """
    if route.to in (SINBIN, SKIP):
        return route
    value = row.get(TRANSFORMATION) if row else None
    if value is not None and str(value).strip():
        return Route(HOLD_RULE, SKIP, HOLD_REASON, f"the legacy database records '{str(value).strip()}'")
    if listed:
        return Route(HOLD_RULE, SKIP, HOLD_REASON, "listed by migrator transform load")
    return route


def listed_uids(session: Session, uids: Sequence[str]) -> set[str]:
    """Return those of ``uids`` that have a transform item, so that the migration holds them back too."""
    found: set[str] = set()
    for start in range(0, len(uids), 1000):
        found.update(session.scalars(select(TransformItem.sop_instance_uid)
                                     .where(TransformItem.sop_instance_uid.in_(uids[start:start + 1000]))))
    return found


@dataclass(frozen=True)
class InvalidHold:
    """A held-back instance whose legacy value names no known transformation."""

    instance_id: int
    rel_path: str
    value: str | None


@dataclass
class HoldImport:
    """The result of importing the held-back instances."""

    imported: int = 0
    invalid: list[InvalidHold] = field(default_factory=list)


def held_back_without_item(session: Session) -> list[Instance]:
    """Return the instances skipped as "needs transformation" whose UID has no transform item yet."""
    last = (select(func.max(AuditEntry.id).label("id"))
            .join(Instance, Instance.id == AuditEntry.instance_id)
            .where(Instance.outcome == Outcome.SKIPPED.value)
            .group_by(AuditEntry.instance_id).subquery())
    listed = select(TransformItem.sop_instance_uid)
    return list(session.scalars(
        select(Instance).join(AuditEntry, AuditEntry.instance_id == Instance.id)
        .join(last, last.c.id == AuditEntry.id)
        .where(AuditEntry.route_rule == HOLD_RULE, Instance.sop_instance_uid.is_not(None),
               Instance.sop_instance_uid.not_in(listed))
        .order_by(Instance.id)))


def import_held_back(session: Session, legacy: LegacyDatabase, column: str) -> HoldImport:
    """Create a transform item for each held-back instance from its legacy row's transformation.

    An instance whose value is not a known transformation, or whose row is
    gone, gets no item and is returned in ``invalid``. Correct the value in
    the legacy database, or list the instance in a CSV.

    Raises
    ------
    LegacyDatabaseError
        The reconciliation query failed.
    """
    result = HoldImport()
    instances = held_back_without_item(session)
    if not instances:
        return result
    rows = legacy.fetch([instance.sop_instance_uid or "" for instance in instances])
    for instance in instances:
        uid = instance.sop_instance_uid or ""
        value = rows.get(uid, {}).get(TRANSFORMATION)
        transformation = parse_transformation(str(value)) if value is not None else None
        if transformation is None:
            result.invalid.append(InvalidHold(instance.id, instance.rel_path, None if value is None else str(value)))
            continue
        session.add(TransformItem(
            sop_instance_uid=uid, transformation=transformation.value, source=SOURCE,
            source_detail=f"legacy database column {column}: {str(value).strip()!r}",
            instance_id=instance.id, loaded_at=audit.now(), attempts=0))
        result.imported += 1
    session.commit()
    if result.invalid:
        LOGGER.warning("%d held-back instance(s) have no valid transformation in legacy column %s "
                       "(instance ids %s); expected one of %s", len(result.invalid), column,
                       _ids(result.invalid), ACCEPTED)
    return result


def _ids(invalid: Sequence[InvalidHold], shown: int = 20) -> str:
    ids = ", ".join(str(item.instance_id) for item in invalid[:shown])
    return ids + (f" and {len(invalid) - shown} more" if len(invalid) > shown else "")
